"""``igrpo-plot RUN_DIR``: PNG curves of a run's metrics.jsonl (reward, accuracy, entropy, transitions).

``igrpo-plot RUN_DIR --samples [--step N]`` prints what the model wrote instead (rollouts.jsonl).
"""
from __future__ import annotations

import argparse
import os
import sys

from igrpo_megatron.cli.runner import run_cli
from igrpo_megatron.errors import UserError
from igrpo_megatron.metrics import read_metrics

# One panel per question a reader asks of a run; each lists the series drawn in it.
PANELS = {
    "reward": ("reward_mean",),
    "accuracy": ("draft_acc", "best_draft_acc", "best_draft_acc_bound", "refine_acc"),
    "entropy": ("entropy",),
    "transitions": ("trans_wrong_to_right", "trans_right_to_wrong"),
}


def plot_run(run_dir: str, out_dir: str | None = None) -> list[str]:
    """Write one PNG per panel into ``out_dir`` (default ``run_dir/plots``); return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    if not records:
        raise ValueError(f"{run_dir}/metrics.jsonl has no records yet; plot after the first step")
    out_dir = out_dir or os.path.join(run_dir, "plots")
    os.makedirs(out_dir, exist_ok=True)
    steps = [r["step"] for r in records]
    paths = []
    for name, keys in PANELS.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in keys:
            if any(key in r for r in records):
                ax.plot(steps, [r.get(key, float("nan")) for r in records], label=key)
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
        path = os.path.join(out_dir, f"{name}.png")
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    return run_cli("igrpo-plot", _main, argv)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="igrpo-plot", description=__doc__)
    parser.add_argument("run_dir", help="a training run directory (train.output_dir) holding metrics.jsonl")
    parser.add_argument("--out", default=None, help="folder for the PNGs (default RUN_DIR/plots)")
    parser.add_argument("--samples", action="store_true", help="print the kept rollouts (rollouts.jsonl) instead")
    parser.add_argument("--step", type=int, default=None, help="with --samples: only this step (default: the last)")
    args = parser.parse_args(argv)
    try:
        if args.samples:
            from igrpo_megatron.rollout.samples import format_samples, read_samples

            records = read_samples(args.run_dir, args.step)
            if args.step is None and records:
                records = [r for r in records if r["step"] == records[-1]["step"]]
            if not records:
                raise ValueError(f"{args.run_dir}: no samples" + (f" of step {args.step}" if args.step else ""))
            print(format_samples(records))
            return 0
        for path in plot_run(args.run_dir, args.out):
            print(path)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from e
    return 0


if __name__ == "__main__":
    sys.exit(main())
