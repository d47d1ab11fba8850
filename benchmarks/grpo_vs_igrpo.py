"""GRPO vs iGRPO on the demo's toy task at the same rollout budget: accuracy after K steps and
wall time per step.

Each run is the CPU demo (tiny Qwen2, supervised warm-up in Megatron, real vLLM server, TP=2) with
8 samples per prompt: GRPO G=8, iGRPO N=4 + G=4 with the stages overlapped, and iGRPO with the
stages back to back (``igrpo.overlap_stages=false``: the paper's schedule, which costs it +13 %).
Same seeds for every method (so the same warm-up, hence the same starting model, per seed). Step
time excludes the first step (cold caches). At a matched generation budget iGRPO trains on half
as many sequences (G=4 vs 8), so its update is cheaper; the rollout column isolates generation.

    python benchmarks/grpo_vs_igrpo.py [--steps K] [--seeds 1 2 3]

The LAST line is ``igrpo_vs_grpo_step_time: <iGRPO overlapped / GRPO mean step time>``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = {
    "grpo": ["igrpo.num_drafts=0", "igrpo.num_refinements=8"],
    "igrpo": ["igrpo.num_drafts=4", "igrpo.num_refinements=4", "igrpo.overlap_stages=true"],
    "igrpo_sequential": ["igrpo.num_drafts=4", "igrpo.num_refinements=4", "igrpo.overlap_stages=false"],
}


def run_once(method: str, seed: int, steps: int, warmup_steps: int, workdir: str) -> dict:
    out = os.path.join(workdir, f"{method}_seed{seed}")
    cmd = [sys.executable, "-m", "igrpo_megatron.demo", "--workdir", out, "--warmup-steps", str(warmup_steps),
           *METHODS[method],
           f"train.seed={seed}", f"data.seed={seed}", f"rollout.seed={seed}", f"train.max_steps={steps}",
           "train.save_every=0"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} seed {seed} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    run_dir = os.path.join(out, "run")
    with open(os.path.join(run_dir, "demo_result.json")) as f:
        result = json.load(f)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    timed = records[1:] or records  # the first step pays for cold caches
    result.update(step_time=statistics.mean(r["time_step_s"] for r in timed),
                  rollout_time=statistics.mean(r["time_rollout_s"] for r in timed))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup-steps", type=int, default=150, help="supervised warm-up (same for every method)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--workdir", default=os.path.join(REPO, "runs", "bench_grpo_vs_igrpo"))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args()
    results = {m: [run_once(m, s, args.steps, args.warmup_steps, args.workdir) for s in args.seeds]
               for m in args.methods}

    def mean(m, key):
        return statistics.mean(r[key] for r in results[m])

    print(f"\n{'method':<18}{'acc before':>11}{'acc after':>11}{'gain':>8}{'step s':>9}{'rollout s':>11}   "
          f"({len(args.seeds)} seeds, {args.steps} steps, 8 samples/prompt)")
    for m in args.methods:
        print(f"{m:<18}{mean(m, 'accuracy_before'):>11.3f}{mean(m, 'accuracy_after'):>11.3f}"
              f"{mean(m, 'accuracy_after') - mean(m, 'accuracy_before'):>+8.3f}{mean(m, 'step_time'):>9.2f}"
              f"{mean(m, 'rollout_time'):>11.2f}")
    if "grpo" in results and "igrpo" in results:
        print(f"igrpo_vs_grpo_step_time: {mean('igrpo', 'step_time') / mean('grpo', 'step_time'):.3f}")


if __name__ == "__main__":
    main()
