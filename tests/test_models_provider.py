"""Model provider: HF config reading, vocabulary padding, the TE/FP8 decision, and real builds under torchrun."""
import json
import math
import os

import pytest

from igrpo_megatron.config import ConfigError, ModelConfig, ParallelConfig
from igrpo_megatron.models.logprobs import micro_batch_slices
from igrpo_megatron.models.provider import check_layout, load_hf_config, padded_vocab_size, use_transformer_engine
from torchrun_util import REPO, checks, run_torchrun
from trainer_fixtures import hf_weight_norm


def test_hf_config_fields(tiny_qwen2, tmp_path):
    hf = load_hf_config(tiny_qwen2)
    assert (hf.model_type, hf.hidden_size, hf.num_layers, hf.num_attention_heads, hf.num_kv_heads) == (
        "qwen2", 128, 2, 4, 2)
    assert (hf.head_dim, hf.ffn_hidden_size, hf.rope_theta, hf.qkv_bias, hf.tie_word_embeddings) == (
        32, 256, 10000.0, True, False)
    # Llama: no qkv bias, tied embeddings, old-style rope_theta at the top level
    raw = dict(json.load(open(os.path.join(tiny_qwen2, "config.json"))), model_type="llama",
               tie_word_embeddings=True, rope_theta=500000.0)
    raw.pop("rope_parameters")
    (tmp_path / "config.json").write_text(json.dumps(raw))
    llama = load_hf_config(str(tmp_path))
    assert (llama.qkv_bias, llama.tie_word_embeddings, llama.rope_theta) == (False, True, 500000.0)
    (tmp_path / "config.json").write_text(json.dumps(dict(raw, model_type="mixtral")))
    with pytest.raises(ConfigError, match="model_type 'mixtral' is not supported"):
        load_hf_config(str(tmp_path))
    with pytest.raises(ConfigError, match="model.hf_path"):
        load_hf_config(str(tmp_path / "missing_dir" / "x"))


def test_layout_must_divide_heads_kv_heads_and_layers(tiny_qwen2):
    hf = load_hf_config(tiny_qwen2)  # 4 heads, 2 key/value heads, 2 layers
    with pytest.raises(ConfigError, match="parallel.tp=3 does not divide the model's 4 attention heads"):
        check_layout(hf, 3, 1)
    with pytest.raises(ConfigError, match="parallel.tp=4 does not divide the model's 2 key/value heads"):
        check_layout(hf, 4, 1)
    with pytest.raises(ConfigError, match="parallel.pp=4 does not divide the model's 2 layers; choose a divisor of 2"):
        check_layout(hf, 2, 4)
    check_layout(hf, 2, 2)


def test_padded_vocab_sizes():
    assert padded_vocab_size(320, 1) == 384
    assert padded_vocab_size(320, 2) == 384  # same padded size at TP 1 and 2: checkpoints reshard
    assert padded_vocab_size(151936, 8) == 151936  # Qwen2.5: already a multiple of 128
    assert padded_vocab_size(322, 3, multiple=1) == 324
    assert padded_vocab_size(7, 4, multiple=1) == 8
    assert padded_vocab_size(128, 3) == 384  # lcm(128, 3) = 384


def test_fp8_without_transformer_engine_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"model.fp8=e4m3 needs Transformer Engine.*pip install \.\[gpu\].*model.fp8=null"):
        use_transformer_engine(ModelConfig(fp8="e4m3", dtype="bf16"))
    with pytest.raises(ConfigError, match="model.transformer_impl=transformer_engine"):
        use_transformer_engine(ModelConfig(transformer_impl="transformer_engine"))
    with pytest.raises(ConfigError, match="model.transformer_impl=local"):
        use_transformer_engine(ModelConfig(fp8="hybrid", transformer_impl="local"))
    assert use_transformer_engine(ModelConfig()) is False  # auto without TE: the local spec


def test_layout_errors_name_the_field(tiny_qwen2):
    from igrpo_megatron.models.provider import transformer_config_from_hf

    hf = load_hf_config(tiny_qwen2)
    with pytest.raises(ConfigError, match="parallel.tp=4 does not divide the model's 2 key/value heads"):
        transformer_config_from_hf(hf, ModelConfig(dtype="fp32"), ParallelConfig(tp=4))
    with pytest.raises(ConfigError, match="parallel.pp=3 does not divide the model's 2 layers"):
        transformer_config_from_hf(hf, ModelConfig(dtype="fp32"), ParallelConfig(pp=3))
    with pytest.raises(ConfigError, match="parallel.sequence_parallel=true needs Transformer Engine"):
        transformer_config_from_hf(hf, ModelConfig(dtype="fp32"), ParallelConfig(tp=2, sequence_parallel=True))


@pytest.fixture(scope="module")
def tied_llama(tmp_path_factory):
    from igrpo_megatron.demo.tiny import make_model

    return make_model(str(tmp_path_factory.mktemp("tied_llama")), arch="llama", tie_word_embeddings=True,
                      vocab_size=321, with_tokenizer=False)


def test_layouts_recompute_bf16_and_tied_embeddings(tiny_qwen2, tied_llama):
    out = run_torchrun(os.path.join(REPO, "tests/dist/models_smoke.py"), 2, [tiny_qwen2, tied_llama], timeout=600)
    c = checks(out)
    assert c["tp2pp1_local_vocab"] == 192  # the tokenizer's vocabulary padded to 384, split over 2 ranks
    assert c["tp2pp1_params_with_grad_frac"] == 1.0
    assert c["tp2pp1_padded_vocab"] == c["tp1pp2_padded_vocab"] == 384
    assert c["tp2pp1_layers_per_stage"] == 2 and c["tp1pp2_layers_per_stage"] == 1
    assert c["recompute_param_diff"] <= 1e-7  # gradient checkpointing recomputes the same activations
    assert c["bf16_param_is_bf16"] == 1.0
    # 10 steps, 20 % warm-up (2 steps, linear from 0), then cosine from 1e-3 down to 1e-3 * 0.1
    expected = [1e-3 * k / 2 for k in (1, 2)] + [
        1e-4 + 0.5 * (1 + math.cos(math.pi * (k - 2) / 8)) * 9e-4 for k in range(3, 11)]
    assert [c[f"lr_step{k}"] for k in range(1, 11)] == pytest.approx(expected, rel=1e-5)
    assert c["bf16_last_loss"] < c["bf16_first_loss"] - 0.05
    # tied embeddings over two stages: the first and last stage copies stay in sync through a step
    assert c["llama_tied_pp2_logprob_diff"] <= 1e-6
    assert c["llama_tied_pp2_second_loss_diff"] <= 1e-6
    assert c["llama_tied_pp2_param_diff"] <= 1e-6
    assert c["reference_logprob_diff"] == 0.0 and c["reference_has_optimizer"] == 0.0
    # Policy.weight_norm counts each parameter once: the TP-replicated norms, the tied embedding on
    # its two stages (measured: 2e-8 relative from the HF weights' norm)
    assert c["tp2_weight_norm"] == pytest.approx(hf_weight_norm(tiny_qwen2), rel=1e-6)
    llama = hf_weight_norm(tied_llama)
    for name in ("llama_tied_pp1_weight_norm", "llama_tied_pp2_weight_norm", "reference_weight_norm"):
        assert c[name] == pytest.approx(llama, rel=1e-6), name


CPU_SHIM_CHECK = """
import torch
from igrpo_megatron.models.cpu import enable_cpu_support
assert enable_cpu_support() and enable_cpu_support()  # idempotent
x = torch.ones(2, device="cuda")
print(x.device, x.to(0).device, x.to("cuda:1", torch.float64).dtype, x.cuda().device, x.type(),
      torch.cuda.current_device(), torch.get_rng_state().equal(torch.cuda.get_rng_state()))
"""


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the CPU shim is inactive with CUDA")
def test_cpu_support_redirects_cuda_placements():
    """In a subprocess: the mode is process-wide and must not leak into other tests."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", CPU_SHIM_CHECK], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": REPO}, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["cpu", "cpu", "torch.float64", "cpu", "torch.cuda.FloatTensor", "cpu", "True"]


def test_micro_batches_are_full_slices_of_the_rank_batch():
    assert micro_batch_slices(6, 2) == [slice(0, 2), slice(2, 4), slice(4, 6)]
    for rows in (0, 5):
        with pytest.raises(ValueError, match=f"has {rows} rows, not a positive multiple of train.micro_batch_size=2"):
            micro_batch_slices(rows, 2)
