"""``results.md``: this run's scores, and the paper's Table 1 row for the same model beside them.

The paper's numbers (../shared/PAPER.md, Table 1; avg@k in percent) are kept here as data. A
model is matched by its folder or hub name (``deepseek-ai/DeepSeek-R1-Distill-Qwen-7B`` is that
model's "base" row); a trained model is compared with a row of its choice through
``eval.paper_row`` ("DeepSeek-R1-Distill-Qwen-7B/iGRPO"). PAPER.md gives no per-benchmark
GPQA-Diamond or MMLU-Pro values, so those two have no paper column.
"""
from __future__ import annotations

import os
from typing import Optional

PAPER_COLUMNS = ("aime25", "aime24", "math500", "amc23", "gsm8k", "minerva_math")  # Table 1's order
NA = None  # a value Table 1 does not give
# (model, method) -> Table 1 values in PAPER_COLUMNS order and the printed Avg; None: not given.
PAPER_TABLE1: dict[tuple[str, str], tuple[Optional[float], ...]] = {
    ("Nemotron-H-8B-Base-8K", "base"): (6.20, 8.65, 61.23, 43.21, 41.02, 17.60, 29.65),
    ("Nemotron-H-8B-Base-8K", "GRPO"): (7.78, 9.01, 73.13, 45.10, 81.93, 29.56, 41.08),
    ("Nemotron-H-8B-Base-8K", "iGRPO"): (9.17, 9.56, 78.80, 48.75, 91.26, 32.72, 45.04),
    # The printed Avg of this row is 61.93; its six values average 67.82 (PAPER.md).
    ("DeepSeek-R1-Distill-Qwen-7B", "base"): (38.60, 54.40, 92.80, 90.00, 92.00, 39.10, 61.93),
    ("DeepSeek-R1-Distill-Qwen-7B", "GRPO"): (38.90, 55.00, 93.25, 90.00, 92.12, 40.44, 68.29),
    ("DeepSeek-R1-Distill-Qwen-7B", "iGRPO"): (40.16, 56.30, 93.80, 95.00, 92.42, 41.54, 69.87),
    ("OpenMath-Nemotron-7B", "GRPO"): (NA, NA, NA, NA, NA, NA, 75.02),
    ("OpenMath-Nemotron-7B", "iGRPO"): (62.45, 74.79, 96.00, 97.50, 90.75, 34.94, 76.07),
    ("DeepSeek-R1-Distill-Qwen-14B", "GRPO"): (NA, NA, NA, NA, NA, NA, 71.29),
    ("DeepSeek-R1-Distill-Qwen-14B", "iGRPO"): (45.52, 64.06, 94.00, 93.45, 94.00, 47.06, 73.02),
    ("OpenMath-Nemotron-14B", "GRPO"): (NA, NA, NA, NA, NA, NA, 76.73),
    ("OpenMath-Nemotron-14B", "iGRPO"): (NA, NA, NA, NA, NA, NA, 78.00),
    ("OpenReasoning-Nemotron-7B", "iGRPO"): (79.64, 85.62, NA, NA, NA, NA, NA),  # trained on AceReason-Math
}
PAPER_ROWS = [f"{model}/{method}" for model, method in PAPER_TABLE1]


def paper_row(model: str, chosen: Optional[str]) -> Optional[str]:
    """``eval.paper_row`` if set, else the base row of a model whose name is in Table 1, else None."""
    if chosen:
        return chosen
    name = os.path.basename(model.rstrip("/")).lower()
    return next((f"{m}/base" for m, method in PAPER_TABLE1 if method == "base" and m.lower() == name), None)


def _pct(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.2f}"


def _run_table(results: dict) -> list[str]:
    benches = results["benchmarks"]
    ks = sorted({int(key[5:]) for s in benches.values() for key in s if key.startswith("pass@")})
    head = ["benchmark", "problems", "k", "avg@k", "maj@k", *(f"pass@{k}" for k in ks), "truncated", "mean tokens"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in benches.items():
        n = s["samples"]
        cells = [name, str(s["problems"]), str(n), _pct(100 * s[f"avg@{n}"]), _pct(100 * s[f"maj@{n}"]),
                 *(_pct(100 * s[f"pass@{k}"]) if f"pass@{k}" in s else "–" for k in ks),
                 f"{100 * s['truncation_rate']:.1f} %",
                 "–" if s["mean_tokens"] is None else f"{s['mean_tokens']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"| average of avg@k | | | {_pct(100 * results['average'])} |" + " |" * (len(head) - 4))
    return lines


def _paper_table(results: dict, row: str) -> list[str]:
    model, method = row.split("/", 1)
    paper = PAPER_TABLE1[(model, method)]
    ours = [100 * results["benchmarks"][b][f"avg@{results['benchmarks'][b]['samples']}"]
            if b in results["benchmarks"] else None for b in PAPER_COLUMNS]
    # Our Avg is comparable only over the same six benchmarks.
    ours.append(sum(ours) / len(ours) if all(v is not None for v in ours) else None)
    diff = [None if p is None or o is None else o - p for p, o in zip(paper, ours)]
    lines = [f"## Against the paper: Table 1, {model}, {method} (avg@k, %)", "",
             "| | " + " | ".join(PAPER_COLUMNS) + " | Avg |", "|" + "---|" * (len(PAPER_COLUMNS) + 2),
             f"| paper {method} | " + " | ".join(map(_pct, paper)) + " |",
             "| ours | " + " | ".join(map(_pct, ours)) + " |",
             "| ours - paper | " + " | ".join("–" if d is None else f"{d:+.2f}" for d in diff) + " |"]
    if (model, method) == ("DeepSeek-R1-Distill-Qwen-7B", "base"):
        lines += ["", "The paper prints 61.93 as this row's Avg; its six values average 67.82."]
    return lines


def results_markdown(results: dict) -> str:
    p = results["protocol"]
    lines = [f"# igrpo-eval: {results['model']}", "",
             f"temperature {p['temperature']}, top-p {p['top_p']}, up to {p['max_tokens']} generated tokens, "
             f"seed {p['seed']}; avg@k, maj@k and pass@k in %.", "", *_run_table(results)]
    if results.get("paper_row"):
        lines += ["", *_paper_table(results, results["paper_row"])]
    return "\n".join(lines) + "\n"
