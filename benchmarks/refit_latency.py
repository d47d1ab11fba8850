"""Refit latency per transport (disk, http) against a real vLLM server, next to plain file I/O.

For each model size (tiny Qwen2-shaped models, random weights, fp32) this starts one server,
then times, on the same buckets of HF-named tensors:

* ``plain_io``: ``safetensors.save_file`` of every bucket into a folder plus ``load_file`` of it
  back (every tensor copied into memory): the floor any file-based refit pays;
* ``server_load``: the server alone loading those files (one ``reload_weights`` through the
  worker extension, already paused): vLLM's own cost, the floor for any transport through it;
* ``disk``: ``Refitter.update`` with ``refit_transport=disk``: pause, then write bucket k+1 while
  the server loads bucket k, prefix-cache reset, version, resume;
* ``http``: the same with the bytes in the requests (skipped above ``--http-max-params``).

``--bucket-mb`` defaults to 32 so the 100M model travels in a dozen buckets, as a 7B bf16 model
travels in many (~30) at the default config's 512 MB; with a single bucket nothing overlaps.

The files go to ``/dev/shm`` unless ``--workdir`` names a folder: on this shared virtual disk the
same 400 MB write takes 0.15-1.5 s depending on the neighbours' I/O, which drowns the refit's own
cost. Each figure is the best of ``--repeats`` interleaved runs, each started by ``settle()``.
The last line is ``disk_refit_vs_plain_io: <ratio>`` for the largest model (goal <= 1.5).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/refit_latency.py [--sizes tiny,10m,100m]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# name -> make_model kwargs (head_dim 64 except tiny: vLLM's CPU attention needs >= 32)
SIZES = {
    "tiny": dict(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256),
    "10m": dict(hidden_size=256, num_layers=8, num_heads=4, num_kv_heads=2, intermediate_size=1024),
    "100m": dict(hidden_size=768, num_layers=16, num_heads=12, num_kv_heads=4, intermediate_size=2048),
}


def settle() -> None:
    """Start a timing from a quiet machine: no dirty pages waiting for write-back, and an idle
    server. vLLM's workers busy-poll their shared-memory queue for 1 s after every message
    (``shm_broadcast`` ``busy_loop_s``); on this 2-core machine that steals a core from the
    trainer-side write. Real deployments run the servers on other nodes or GPUs."""
    os.sync()
    time.sleep(1.5)


def plain_io(buckets, folder):
    from safetensors.torch import load_file, save_file

    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    settle()
    t0 = time.perf_counter()
    paths = []
    for i, bucket in enumerate(buckets):
        paths.append(os.path.join(folder, f"bucket-{i:05d}.safetensors"))
        save_file({n: t.contiguous() for n, t in bucket}, paths[-1])
    # load_file maps the file lazily: copy every tensor, as a server copies them into its parameters
    loaded = sum(len({n: t.clone() for n, t in load_file(p).items()}) for p in paths)
    dt = time.perf_counter() - t0
    assert loaded == sum(len(b) for b in buckets)
    return dt


def server_load(admin, folder) -> float:
    """The server loading a folder of safetensors with nothing else running: vLLM's own cost."""
    admin.pause("wait")
    settle()
    t0 = time.perf_counter()
    admin.collective_rpc("igrpo_load_safetensors", [folder])
    dt = time.perf_counter() - t0
    admin.reset_prefix_cache()
    admin.resume()
    return dt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,10m,100m")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bucket-mb", type=int, default=32)
    parser.add_argument("--http-max-params", type=float, default=30e6)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    import torch
    from safetensors.torch import load_file

    from igrpo_megatron.config import RolloutConfig
    from igrpo_megatron.demo.tiny import make_model
    from igrpo_megatron.models.parallel import free_port
    from igrpo_megatron.rollout import Refitter, launch_server
    from igrpo_megatron.weights import bucketize

    work = args.workdir or tempfile.mkdtemp(prefix="refit_bench_", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    rows = []
    version = 0
    for size in args.sizes.split(","):
        model_dir = make_model(os.path.join(work, size), arch="qwen2", **SIZES[size])
        sd = load_file(os.path.join(model_dir, "model.safetensors"))
        params = sum(t.numel() for t in sd.values())
        nbytes = sum(t.numel() * t.element_size() for t in sd.values())
        g = torch.Generator().manual_seed(0)
        sd = {n: t + 0.01 * torch.randn(t.shape, generator=g) for n, t in sd.items()}
        buckets = list(bucketize(sd.items(), args.bucket_mb << 20))
        refit_dir = os.path.join(work, f"{size}_refit")
        cfg = RolloutConfig(dtype="float32", max_model_len=512, max_prompt_tokens=256, max_tokens=256,
                            kv_cache_memory_bytes=128 << 20, enforce_eager=True, startup_timeout_s=900,
                            refit_dir=refit_dir, refit_bucket_mb=args.bucket_mb, port=free_port())
        server = launch_server(cfg, model_dir, os.path.join(work, f"{size}_server.log"),
                               env={"OMP_NUM_THREADS": "1"})
        try:
            row = {"model": size, "params": params, "mb": nbytes / 2**20}
            # Interleaved repeats, so page-cache and write-back state affect every column alike.
            transports = ["disk"] + (["http"] if params <= args.http_max_params else [])
            refitters = {t: Refitter(dataclasses.replace(cfg, refit_transport=t), [server.url], server.api_key)
                         for t in transports}
            times: dict = {k: [] for t in ("", "disk", "http") for k in
                           ([t + p for p in ("", "_pause", "_load")] if t else ["plain_io", "server_load"])}
            for _ in range(args.repeats):
                plain_dir = os.path.join(work, f"{size}_plain")
                times["plain_io"].append(plain_io(buckets, plain_dir))
                times["server_load"].append(server_load(server.admin, plain_dir))
                for t, refitter in refitters.items():
                    version += 1
                    settle()
                    stats = refitter.update(iter(buckets), version)
                    times[t].append(stats.total_s)
                    times[t + "_pause"].append(stats.pause_s)
                    times[t + "_load"].append(stats.load_s)
            row.update({k: min(v) if v else float("nan") for k, v in times.items()})
            rows.append(row)
        finally:
            server.stop()
            shutil.rmtree(refit_dir, ignore_errors=True)
            shutil.rmtree(os.path.join(work, f"{size}_plain"), ignore_errors=True)

    print(f"\n{'model':>6} {'params':>12} {'MB':>8} {'plain_io_s':>11} {'server_load_s':>14} {'disk_s':>8} "
          f"{'(load)':>8} {'http_s':>8} {'(load)':>8} {'disk/plain':>10}")
    for r in rows:
        print(f"{r['model']:>6} {r['params']:>12,} {r['mb']:>8.1f} {r['plain_io']:>11.3f} {r['server_load']:>14.3f} "
              f"{r['disk']:>8.3f} {r['disk_load']:>8.3f} {r['http']:>8.3f} {r['http_load']:>8.3f} "
              f"{r['disk'] / r['plain_io']:>10.2f}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    largest = max(rows, key=lambda r: r["params"])
    # Where the disk refit's time goes (each phase its own best, so they need not add up exactly):
    # pause, the overlapped write+load, then prefix-cache reset + version + resume.
    d = largest
    print(f"{d['model']} disk refit by phase: pause {d['disk_pause']:.3f} s, write+load {d['disk_load']:.3f} s "
          f"(vLLM's own load of the same files {d['server_load']:.3f} s, plain write+read {d['plain_io']:.3f} s), "
          f"reset+version+resume {d['disk'] - d['disk_pause'] - d['disk_load']:.3f} s")
    print(f"disk_refit_vs_plain_io: {largest['disk'] / largest['plain_io']:.2f}")


if __name__ == "__main__":
    main()
