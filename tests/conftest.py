import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory):
    """A tiny random Qwen2 (head_dim 32, GQA 2) with its tokenizer, saved as an HF folder."""
    from igrpo_megatron.demo.tiny import make_model

    return make_model(str(tmp_path_factory.mktemp("tiny_qwen2")), arch="qwen2")
