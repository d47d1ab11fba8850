"""Forward + backward time of a Megatron Nemotron-H hybrid (Mamba-2 / attention / MLP), and of the
Mamba-2 scan alone, on this machine.

* ``scan``: the pure-torch chunked SSD scan (``models/cpu_mamba.ssd_chunk_scan``) on one Mamba
  layer's shapes; where ``mamba_ssm`` imports (GPU nodes), its Triton ``mamba_chunk_scan_combined``
  on the same inputs too, with the largest output and gradient differences between the two;
* ``model``: the MambaModel the provider builds for the config (random weights, fp32, a world of
  one), forward and backward of a mean token loss, through the same kernels the trainer uses
  (pure-torch where ``mamba_ssm`` is missing, its kernels where it is installed).

Each time is the median of ``--iters`` runs after one warm-up. Sizes: ``tiny`` is the tests' model
(hidden 128, pattern M*M-M-, scan chunks of 8); ``small`` a 8-layer, hidden-1024 hybrid with
Nemotron-H's chunk of 128 (for GPUs). The last line is ``hybrid_fwd_bwd_ms: <median>``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/hybrid_fwd_bwd.py [--size tiny] [--batch 2] [--seq 128]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import torch  # noqa: E402

SIZES = {
    "tiny": dict(hidden_size=128, hybrid_override_pattern="M*M-M-", num_attention_heads=4, num_key_value_heads=2,
                 head_dim=32, intermediate_size=256, mamba_num_heads=8, mamba_head_dim=16, n_groups=2,
                 ssm_state_size=16, conv_kernel=4, chunk_size=8, vocab_size=320),
    "small": dict(hidden_size=1024, hybrid_override_pattern="M-M*M-M-", num_attention_heads=16,
                  num_key_value_heads=4, head_dim=64, intermediate_size=4096, mamba_num_heads=32,
                  mamba_head_dim=64, n_groups=4, ssm_state_size=128, conv_kernel=4, chunk_size=128,
                  vocab_size=32000),
}


def timed(fn, iters: int, device: torch.device) -> float:
    """Median milliseconds of ``fn()`` over ``iters`` runs after a warm-up."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    times = []
    for _ in range(iters):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def scan_inputs(cfg: dict, batch: int, seq: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    h, p, ng, n = cfg["mamba_num_heads"], cfg["mamba_head_dim"], cfg["n_groups"], cfg["ssm_state_size"]
    r = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    return dict(x=r(batch, seq, h, p), dt=r(batch, seq, h), A=-torch.rand(h, generator=g).to(device) * 4 - 0.5,
                B=r(batch, seq, ng, n), C=r(batch, seq, ng, n), D=r(h), z=r(batch, seq, h, p), dt_bias=r(h) - 1)


def bench_scan(cfg: dict, batch: int, seq: int, iters: int, device: torch.device) -> None:
    from igrpo_megatron.models.cpu_mamba import mamba_ssm_available, ssd_chunk_scan

    inputs = scan_inputs(cfg, batch, seq, device)
    kernels = {"pure_torch": ssd_chunk_scan}
    if mamba_ssm_available():
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

        kernels["mamba_ssm"] = mamba_chunk_scan_combined
    results = {}
    for name, scan in kernels.items():
        leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}

        def step():
            for v in leaves.values():
                v.grad = None
            y = scan(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], cfg["chunk_size"],
                     D=leaves["D"], z=leaves["z"], dt_bias=leaves["dt_bias"], dt_softplus=True)
            y.float().square().mean().backward()
            return y

        ms = timed(step, iters, device)
        y = step().detach().float()
        results[name] = (y, {k: v.grad.float() for k, v in leaves.items()})
        print(f"scan {name}: fwd+bwd {ms:.2f} ms (batch {batch}, seq {seq}, chunk {cfg['chunk_size']})", flush=True)
    if "mamba_ssm" in results:
        (y0, g0), (y1, g1) = results["pure_torch"], results["mamba_ssm"]
        print(f"scan pure_torch vs mamba_ssm: max|dy| {(y0 - y1).abs().max():.3e} (max|y| {y1.abs().max():.2f}); "
              + ", ".join(f"grad {k} rel {((g0[k] - g1[k]).abs().max() / g1[k].abs().max()):.2e}" for k in g0),
              flush=True)


def bench_model(cfg: dict, batch: int, seq: int, iters: int) -> float:
    from igrpo_megatron.config import ModelConfig, ParallelConfig
    from igrpo_megatron.models.cpu import mamba_ssm_available
    from igrpo_megatron.models.logprobs import token_logprobs
    from igrpo_megatron.models.parallel import current_device, initialize_parallel
    from igrpo_megatron.models.provider import build_model
    from igrpo_megatron.weights.nemotron_h import NemotronHSpec

    raw = dict(cfg, model_type="nemotron_h", layer_norm_epsilon=1e-5, max_position_embeddings=max(seq, 1024),
               mlp_hidden_act="relu2", use_conv_bias=True, tie_word_embeddings=False)
    hf_cfg = NemotronHSpec().read_config(raw, "benchmark")
    par = ParallelConfig(tp=1, pp=1)
    initialize_parallel(par, seed=0)
    model = build_model(hf_cfg, ModelConfig(dtype="fp32"), par)
    device = current_device()
    tokens = torch.randint(0, hf_cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(1)).to(device)
    positions = torch.arange(seq, device=device).expand(batch, -1)

    def step():
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=tokens, position_ids=positions, attention_mask=None)
        lp, _ = token_logprobs(logits, tokens, vocab_size=hf_cfg.vocab_size)
        (-lp.mean()).backward()

    ms = timed(step, iters, device)
    kernels = "mamba_ssm kernels" if mamba_ssm_available() else "pure-torch chunked scan"
    print(f"model {hf_cfg.pattern} hidden {hf_cfg.hidden_size} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
          f"params, {kernels}, {device.type}): fwd+bwd batch {batch} seq {seq}", flush=True)
    return ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = SIZES[args.size]
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    bench_scan(cfg, args.batch, args.seq, args.iters, device)
    ms = bench_model(cfg, args.batch, args.seq, args.iters)
    print(f"hybrid_fwd_bwd_ms: {ms:.1f}", flush=True)


if __name__ == "__main__":
    main()
