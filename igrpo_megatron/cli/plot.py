"""``igrpo-plot RUN [RUN ...]``: PNG curves of runs' metrics.jsonl, several runs overlaid in each figure.

One figure per question the paper's plots answer: training reward (Fig. S.2), mean token entropy
(Fig. 3), response length, draft vs refinement accuracy, and refinement transitions. A run is a
folder (labelled by its name) or ``NAME=DIR``; each run keeps one colour in every figure.

``igrpo-plot RUN_DIR --samples [--step N]`` prints what the model wrote instead (rollouts.jsonl).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

from igrpo_megatron.cli.runner import run_cli
from igrpo_megatron.errors import UserError
from igrpo_megatron.metrics import read_metrics


@dataclass(frozen=True)
class Figure:
    title: str
    ylabel: str
    series: tuple[tuple[str, str, str], ...]  # (metric key, legend suffix, line style)
    two_stage_only: tuple[str, ...] = ()  # keys that mean nothing for a GRPO run (no drafts)
    grpo_suffix: tuple[tuple[str, str], ...] = ()  # (key, legend suffix) where a GRPO run names it otherwise


FIGURES = {
    "reward": Figure("training reward (paper Fig. S.2)", "mean reward of the trained samples",
                     (("reward_mean", "", "-"),)),
    "entropy": Figure("mean token entropy (paper Fig. 3)", "entropy (nats / token)", (("entropy", "", "-"),)),
    "response_length": Figure("response length", "mean response length (tokens)",
                              (("response_len_mean", "", "-"),)),
    "accuracy": Figure("draft vs refinement accuracy", "accuracy",
                       (("refine_acc", "refinements", "-"), ("draft_acc", "drafts", "--"),
                        ("best_draft_acc", "best draft", ":")),
                       two_stage_only=("draft_acc", "best_draft_acc"), grpo_suffix=(("refine_acc", "samples"),)),
    "transitions": Figure("refinement transitions (iGRPO only)", "P(refinement | best draft)",
                          (("trans_wrong_to_right", "wrong -> right", "-"),
                           ("trans_right_to_wrong", "right -> wrong", "--")),
                          two_stage_only=("trans_wrong_to_right", "trans_right_to_wrong")),
}


def parse_runs(specs: list[str]) -> dict[str, str]:
    """``DIR`` or ``NAME=DIR`` -> {name: dir}; a name given twice is an error."""
    runs: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = os.path.basename(os.path.normpath(spec)), spec
        if name in runs:
            raise ValueError(f"two runs are named {name!r}; label them as NAME=DIR")
        runs[name] = path
    return runs


def _is_grpo(records: list[dict]) -> bool:
    """A run without drafts (``igrpo.num_drafts: 0``): its records say so by a zero draft length."""
    return all(r.get("draft_len_mean") == 0 for r in records)


@dataclass(frozen=True)
class Line:
    label: str
    colour: str
    style: str
    steps: list[int]
    values: list[float]


def figure_lines(data: dict[str, list[dict]]) -> dict[str, list[Line]]:
    """The curves of each figure of :data:`FIGURES`, run by run, for ``{run name: records}``; a
    figure no run has data for is left out. Each run keeps one colour in every figure."""
    colours = {name: f"C{i}" for i, name in enumerate(data)}
    figures: dict[str, list[Line]] = {}
    for fig_name, spec in FIGURES.items():
        lines = []
        for name, records in data.items():
            grpo = _is_grpo(records)
            for key, suffix, style in spec.series:
                if not any(key in r for r in records) or (key in spec.two_stage_only and grpo):
                    continue
                suffix = dict(spec.grpo_suffix).get(key, suffix) if grpo else suffix
                lines.append(Line(f"{name}: {suffix}" if suffix else name, colours[name], style,
                                  [r["step"] for r in records], [r.get(key, float("nan")) for r in records]))
        if lines:
            figures[fig_name] = lines
    return figures


def plot_runs(runs: dict[str, str], out_dir: str) -> list[str]:
    """Write one PNG per figure into ``out_dir`` (:func:`figure_lines`); return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    data = {}
    for name, run_dir in runs.items():
        data[name] = read_metrics(run_dir)
        if not data[name]:
            raise ValueError(f"{run_dir}/metrics.jsonl has no records yet; plot after the first step")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for fig_name, lines in figure_lines(data).items():
        spec = FIGURES[fig_name]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for line in lines:
            ax.plot(line.steps, line.values, line.style, color=line.colour, label=line.label, linewidth=1.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("training step")
        ax.set_ylabel(spec.ylabel)
        ax.set_title(spec.title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        path = os.path.join(out_dir, f"{fig_name}.png")
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    return run_cli("igrpo-plot", _main, argv)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="igrpo-plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="a training run directory (train.output_dir, holding metrics.jsonl), or NAME=DIR")
    parser.add_argument("--out", default=None,
                        help="folder for the PNGs (default: RUN/plots for one run, ./plots for several)")
    parser.add_argument("--samples", action="store_true", help="print the kept rollouts (rollouts.jsonl) instead")
    parser.add_argument("--step", type=int, default=None, help="with --samples: only this step (default: the last)")
    args = parser.parse_args(argv)
    try:
        runs = parse_runs(args.runs)
        if args.samples:
            if len(runs) != 1:
                raise ValueError("--samples reads one run; give one RUN")
            from igrpo_megatron.rollout.samples import format_samples, read_samples

            (run_dir,) = runs.values()
            records = read_samples(run_dir, args.step)
            if args.step is None and records:
                records = [r for r in records if r["step"] == records[-1]["step"]]
            if not records:
                raise ValueError(f"{run_dir}: no samples" + (f" of step {args.step}" if args.step else ""))
            print(format_samples(records))
            return 0
        out = args.out or (os.path.join(next(iter(runs.values())), "plots") if len(runs) == 1 else "plots")
        for path in plot_runs(runs, out):
            print(path)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from e
    return 0


if __name__ == "__main__":
    sys.exit(main())
