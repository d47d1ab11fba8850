"""One GRPO step through ``igrpo-train``, the same step with its advantages negated, and each step's
sequences scored before and after it (one rank under torchrun; tests/test_policy_gradient_sign.py).

``pg_sign.py ASCENT_YAML FLIPPED_YAML OUT_JSON``:

1. ``igrpo-train``'s own ``main`` trains ASCENT_YAML (``loss.advantage: grpo``).
2. The negative control registers ``negated_grpo`` (minus GRPO's advantages) in the advantage
   registry, the extension point, and trains FLIPPED_YAML with it selected. The config's
   ``Literal`` admits only the shipped estimators, so the name is set on the loaded config before
   ``trainer.train`` (what ``main`` calls once the config is loaded): no user-facing flip option exists.
3. Each run's step-1 sequences (their sampled token ids, from ``rollouts.jsonl``) are scored by the
   project's Megatron forward (``Policy.compute_logprobs``, at the sampling temperature) under the
   weights that sampled them (``model.hf_path``) and under the run's step-1 checkpoint. OUT_JSON
   gets, per run, each sequence's mean response-token logprob ``before`` and ``after``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys

import torch

from igrpo_megatron.algorithms.advantages import ADVANTAGE_ESTIMATORS, grpo_advantages
from igrpo_megatron.batch import pack_rows
from igrpo_megatron.cli.train import main as igrpo_train
from igrpo_megatron.config import Config, load_config
from igrpo_megatron.models import initialize_parallel, load_hf_config
from igrpo_megatron.models.policy import Policy
from igrpo_megatron.rollout.samples import read_samples
from igrpo_megatron.trainer import train


@ADVANTAGE_ESTIMATORS.register("negated_grpo")
def negated_grpo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    return -grpo_advantages(rewards)


def mean_logprobs(cfg: Config, rows: list[tuple[list[int], list[int]]], checkpoint: str | None) -> list[float]:
    """Each row's mean response-token logprob under ``model.hf_path``, or ``checkpoint`` if given."""
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init_checkpoint=checkpoint))
    initialize_parallel(cfg.parallel, cfg.train.seed)
    policy = Policy(cfg, load_hf_config(cfg.model.hf_path), frozen=True)
    batch = pack_rows([p for p, _ in rows], [r for _, r in rows], torch.zeros(len(rows)), pad_id=0)
    lp = policy.compute_logprobs(batch)
    return ((lp * batch.response_mask).sum(1) / batch.response_mask.sum(1)).tolist()


def scores(cfg: Config) -> dict[str, list[float]]:
    """The run's step-1 sequences under the starting weights and under its step-1 checkpoint."""
    rows = [(rec["prompt_ids"], s["token_ids"]) for rec in read_samples(cfg.train.output_dir, step=1)
            for s in rec["refinements"]]
    after = os.path.join(cfg.train.output_dir, "checkpoints", "iter_0000001")
    return {"before": mean_logprobs(cfg, rows, None), "after": mean_logprobs(cfg, rows, after)}


def main(ascent_yaml: str, flipped_yaml: str, out_json: str) -> None:
    assert igrpo_train(["--config", ascent_yaml]) == 0
    ascent, flipped = load_config(ascent_yaml), load_config(flipped_yaml)
    train(dataclasses.replace(flipped, loss=dataclasses.replace(flipped.loss, advantage="negated_grpo")))
    with open(out_json, "w") as f:
        json.dump({"ascent": scores(ascent), "flipped": scores(flipped)}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
