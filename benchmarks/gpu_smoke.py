"""The project's Megatron policy on one CUDA device as it would train (bf16, no CPU adjustments:
``enable_cpu_support`` installs nothing when CUDA is there): a ~1B Qwen2-shaped model with random
weights, one TP=1 train step, its tokens/s and MFU, and bf16 against fp32 logprobs on the same weights.

MFU is 6 x params x real tokens / step time / the device's dense bf16 peak (``--peak-tflops``;
by default looked up from the device name). ``--dry`` runs the same code on a tiny model on CPU
(fp32 cores, peak from a matmul), to check the script where no GPU is.

    torchrun --standalone --nproc_per_node=1 benchmarks/gpu_smoke.py [--dry]
"""
import argparse
import json
import os
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from igrpo_megatron.algorithms.losses import policy_loss  # noqa: E402
from igrpo_megatron.batch import TrainBatch  # noqa: E402
from igrpo_megatron.config import Config  # noqa: E402
from igrpo_megatron.models import Policy, initialize_parallel, load_hf_config  # noqa: E402

# ~1.0B parameters in the shape of Qwen2 (head_dim 128, GQA 4:1, the Qwen2 vocabulary); --dry: tiny
SHAPES = {
    "1b": dict(hidden_size=2048, num_hidden_layers=20, num_attention_heads=16, num_key_value_heads=4,
               intermediate_size=5632, vocab_size=151936),
    "dry": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=256, vocab_size=1024),
}
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}  # dense


def write_config(folder: str, shape: dict) -> str:
    """A Qwen2 config.json only: the policy initialises its own random weights (no 4 GB file)."""
    cfg = dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"], hidden_act="silu", rms_norm_eps=1e-6,
               rope_theta=1e6, max_position_embeddings=4096, tie_word_embeddings=False, torch_dtype="bfloat16",
               **shape)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    return folder


def policy(hf: str, dtype: str, frozen: bool) -> Policy:
    cfg = Config()
    cfg.model.hf_path, cfg.model.dtype, cfg.model.load_hf_weights = hf, dtype, False
    cfg.train.micro_batch_size, cfg.train.max_steps, cfg.rollout.temperature = 2, 10, 1.0
    return Policy(cfg, load_hf_config(hf), frozen=frozen)


def params_by_name(p: Policy) -> dict:
    return {n.replace("module.", ""): t for n, t in p.model_chunks[0].named_parameters()}


def peak_tflops(dry: bool) -> tuple[float, str]:
    if dry or not torch.cuda.is_available():
        a = torch.randn(1024, 1024)
        t0 = time.perf_counter()
        for _ in range(10):
            a @ a
        return 10 * 2 * 1024 ** 3 / (time.perf_counter() - t0) / 1e12, "fp32 matmul on this CPU"
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops, f"{name} dense bf16"
    raise SystemExit(f"unknown device {name}: pass --peak-tflops")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dry", action="store_true", help="tiny model on CPU (checks the script, no figures)")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--peak-tflops", type=float, default=None)
    a = ap.parse_args()
    if a.dry:
        a.rows, a.seq = 4, 64
    elif not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --dry to check the script here")
    shape = SHAPES["dry" if a.dry else "1b"]
    hf = write_config(tempfile.mkdtemp(), shape)
    cfg = Config()
    initialize_parallel(cfg.parallel, seed=1)
    dtype = "fp32" if a.dry else "bf16"  # CPU bf16 matmuls are emulated: --dry checks the code path only
    train = policy(hf, dtype, frozen=False)
    n_params = sum(t.numel() for t in params_by_name(train).values())
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, shape["vocab_size"], (a.rows, a.seq), generator=g)
    mask = torch.zeros(a.rows, a.seq)
    mask[:, a.seq // 4:] = 1  # a quarter prompt, three quarters response
    batch = TrainBatch(tokens, mask, torch.randn(a.rows, generator=g))

    # bf16 against fp32 logprobs on the same weights (bf16 values are exact in fp32)
    lp16 = train.compute_logprobs(batch).float()
    ref = policy(hf, "fp32", frozen=True)
    src = params_by_name(train)
    with torch.no_grad():
        for name, t in params_by_name(ref).items():
            t.copy_(src[name].float())
    lp32 = ref.compute_logprobs(batch)
    del ref
    m = mask.bool()
    diff = (lp16 - lp32.to(lp16.device))[m.to(lp16.device)].abs()
    print(f"logprobs {dtype} vs fp32, same weights: mean |diff| {diff.mean():.4g}, max {diff.max():.4g}, "
          f"mean fp32 logprob {lp32[m.to(lp32.device)].mean():.3f}")

    def loss(lp, ent, mb, d):
        return policy_loss(lp, mb.old_logprobs, mb.advantages, mb.response_mask, train.cfg.loss, **d)

    def step() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = train.train_step(batch, loss)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    step()  # warm-up: allocator, kernels, optimizer state
    seconds, out = step()
    real = int(a.rows * a.seq)
    peak, what = (a.peak_tflops, "given") if a.peak_tflops else peak_tflops(a.dry)
    achieved = 6 * n_params * real / seconds / 1e12
    mem = f", peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if torch.cuda.is_available() else ""
    print(f"{n_params / 1e9:.3f}B params, {dtype}, TP=1, {a.rows} rows x {a.seq} tokens, micro-batch 2: "
          f"step {seconds:.3f} s, {real / seconds:,.0f} tokens/s, {achieved:.1f} TFLOP/s "
          f"(6 x params x tokens) vs peak {peak:.1f} ({what}){mem}; loss figures {sorted(out)[:3]}")
    print(f"{'dry_' if a.dry else ''}train_step_mfu: {achieved / peak:.3f}")


if __name__ == "__main__":
    main()
