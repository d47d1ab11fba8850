"""What the checkpoint checksums cost, against the save they are part of.

Builds a wide random Qwen2 in one process (TP1/PP1, gloo), with Megatron's distributed optimizer
after one step (so Adam's moments are saved too, as in training), then times
``save_checkpoint`` (which sums every file it writes, :mod:`igrpo_megatron.checkpoint.integrity`)
and, right after each save, the summing of the same files alone (warm page cache, as in the
save). All temp files are removed at the end.

    OMP_NUM_THREADS=1 python benchmarks/checksum_cost.py [--layers 4] [--repeats 3] [--tmp DIR]

Last line: ``checksum_cost: <summing time / (save time - summing time)>`` (goal <= 0.10).
"""
import argparse
import os
import shutil
import tempfile
import time

import torch

from igrpo_megatron.checkpoint import integrity, save_checkpoint
from igrpo_megatron.config import ModelConfig, ParallelConfig
from igrpo_megatron.models.parallel import destroy_parallel, initialize_parallel
from igrpo_megatron.models.provider import build_model, load_hf_config
from igrpo_megatron.demo.tiny import make_model


def build(hf_dir: str):
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    par = ParallelConfig(tp=1, pp=1)
    initialize_parallel(par, seed=0)
    model = build_model(load_hf_config(hf_dir), ModelConfig(hf_path=hf_dir, dtype="fp32", transformer_impl="local"),
                        par, wrap_ddp=True)
    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=1e-4, bf16=False, use_distributed_optimizer=True, clip_grad=0.0), [model])
    for p in model.parameters():  # one step, so that the moments exist and are saved
        p.main_grad = torch.full_like(p, 1e-3)
    optimizer.step()
    return model, optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (4: ~0.25 GB of weights, x3 with Adam)")
    parser.add_argument("--repeats", type=int, default=3, help="timed saves; the best of each figure is reported")
    parser.add_argument("--tmp", default=None, help="scratch folder (default: the system temp dir)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="igrpo_checksum_bench_", dir=args.tmp)
    try:
        hf_dir = make_model(os.path.join(work, "hf"), arch="qwen2", vocab_size=32000, hidden_size=1024,
                            num_layers=args.layers, num_heads=16, num_kv_heads=4, intermediate_size=4096,
                            with_tokenizer=False)
        model, optimizer = build(hf_dir)
        save_s = sum_s = float("inf")
        for step in range(args.repeats):
            root = os.path.join(work, "ckpt")
            shutil.rmtree(root, ignore_errors=True)
            t0 = time.perf_counter()
            path = save_checkpoint(root, step, [model], optimizer)
            save_s = min(save_s, time.perf_counter() - t0)
            names = integrity.all_files(path)
            t0 = time.perf_counter()
            integrity.checksums(path, names)
            sum_s = min(sum_s, time.perf_counter() - t0)
        size = sum(os.path.getsize(os.path.join(path, n)) for n in names)
        print(f"checkpoint: {len(names)} files, {size / 2**20:.0f} MiB")
        print(f"save (checksums included): {save_s:.2f} s ({size / 2**20 / save_s:.0f} MiB/s)")
        print(f"checksums alone: {sum_s:.2f} s ({size / 2**20 / sum_s:.0f} MiB/s, {integrity.ALGORITHM})")
        destroy_parallel()
        print(f"checksum_cost: {sum_s / (save_s - sum_s):.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
