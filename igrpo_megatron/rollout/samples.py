"""``rollouts.jsonl``: what the model wrote, kept beside the metrics so a run can be read, not only plotted.

One JSON line per kept prompt and step: the question and gold answer, every draft with its reward,
the chosen draft, every refinement with its reward, length and finish reason (Critique-GRPO: and
the critiques), and the weight version that generated them. ``train.samples_fraction`` keeps a
seeded share of the prompts (the same share after a resume, since the choice depends only on the
step and the prompt's position); ``train.samples_token_ids`` also stores token ids, for exact
offline re-scoring.
``igrpo-plot RUN_DIR --samples [--step N]`` prints them.
"""
from __future__ import annotations

import json
import os
import random
from typing import Sequence

FILE = "rollouts.jsonl"


def _keep(step: int, index: int, fraction: float, seed: int) -> bool:
    return fraction >= 1.0 or random.Random(f"{seed}/{step}/{index}").random() < fraction


class SampleLog:
    """Appends each step's kept groups to ``run_dir/rollouts.jsonl`` (rank 0 only)."""

    def __init__(self, run_dir: str, tokenizer, fraction: float = 1.0, token_ids: bool = False, seed: int = 0):
        os.makedirs(run_dir, exist_ok=True)
        self.path = os.path.join(run_dir, FILE)
        self.tokenizer, self.fraction, self.token_ids, self.seed = tokenizer, fraction, token_ids, seed

    def _text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def record(self, step: int, g) -> dict:
        """One group as a JSON-ready dict."""
        drafts = [{"text": self._text(ids), "reward": r, "accuracy": a, "format": f, "length": len(ids)}
                  for ids, r, a, f in zip(g.draft_ids, g.draft_rewards, g.draft_accuracy, g.draft_format)]
        refinements = [{"text": self._text(ids), "reward": r, "accuracy": a, "format": f, "length": len(ids),
                        "finish_reason": why}
                       for ids, r, a, f, why in zip(g.response_ids, g.rewards, g.accuracy, g.format_scores,
                                                    g.finish_reasons)]
        if self.token_ids:
            for row, ids in zip(refinements, g.response_ids):
                row["token_ids"] = list(ids)
        rec = {"step": step, "id": g.id, "weight_version": g.weight_version, "question": g.question,
               "answer": g.answer, "drafts": drafts, "best_draft": g.best_draft, "refinements": refinements}
        if g.critiques:
            rec["critiques"] = list(g.critiques)
        if self.token_ids:
            rec["prompt_ids"] = list(g.prompt_ids)
        return rec

    def write(self, step: int, groups: Sequence) -> int:
        """Append the kept groups of ``step``; returns how many were kept."""
        kept = [self.record(step, g) for i, g in enumerate(groups) if _keep(step, i, self.fraction, self.seed)]
        with open(self.path, "a", encoding="utf-8") as f:
            for rec in kept:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        return len(kept)


def read_samples(run_dir: str, step: int | None = None) -> list[dict]:
    """The records of ``run_dir/rollouts.jsonl`` (of one step, if given); the last write of a step wins
    (a step repeated after a resume replaces the earlier one)."""
    path = os.path.join(run_dir, FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist; is {run_dir} a run directory (train.output_dir)?")
    by_key: dict = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                if step is None or rec["step"] == step:
                    by_key[(rec["step"], rec["id"])] = rec
    return sorted(by_key.values(), key=lambda r: r["step"])


def format_samples(records: Sequence[dict], width: int = 400) -> str:
    """Records as text a person reads: question, gold, drafts (the chosen one marked), refinements."""

    def clip(text: str) -> str:
        text = text.replace("\n", " ⏎ ")
        return text if len(text) <= width else text[: width // 2] + " … " + text[-width // 2:]

    out = []
    for r in records:
        out.append(f"=== step {r['step']}  {r['id']}  (weights v{r['weight_version']})")
        out.append(f"Q: {clip(r['question'])}")
        out.append(f"gold: {r['answer']}")
        for i, d in enumerate(r["drafts"]):
            mark = "*" if i == r["best_draft"] else " "
            out.append(f" {mark}draft {i}  reward {d['reward']:.2f}  {d['length']} tok: {clip(d['text'])}")
        for i, s in enumerate(r["refinements"]):
            out.append(f"  refine {i}  reward {s['reward']:.2f}  {s['length']} tok {s['finish_reason']}: {clip(s['text'])}")
    return "\n".join(out)
