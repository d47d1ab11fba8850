import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory):
    """A tiny random Qwen2 (head_dim 32, GQA 2) with its tokenizer, saved as an HF folder."""
    from igrpo_megatron.demo.tiny import make_model

    return make_model(str(tmp_path_factory.mktemp("tiny_qwen2")), arch="qwen2")


@pytest.fixture(scope="session")
def real_model():
    """SmolLM2-135M-Instruct (a real Llama: 30 layers, 9 / 3 heads) as a local HF folder; ``make test`` builds it."""
    from igrpo_megatron.demo.real_model import real_model_path

    return real_model_path()
