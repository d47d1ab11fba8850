"""Every prompt tokenized once, when the data is loaded, and checked against the prompt budget.

A question longer than ``rollout.max_prompt_tokens`` used to fail at its step with vLLM's HTTP
400, and one that fits in stage 1 but leaves no room for a draft in the stage-2 prompt failed
in stage 2 with "no room for the draft", both without naming the row, minutes or hours into
the run. Checked here, before any server starts, such a row is a :class:`DataError` naming the
file, the row and the lengths, or with ``data.skip_malformed`` is skipped and counted in one line.
"""
from __future__ import annotations

import logging

from igrpo_megatron.algorithms.igrpo import (DEFAULT_TEMPLATE, MIN_DRAFT_ROOM, build_prompt_messages,
                                             draft_budget, refinement_frame)
from igrpo_megatron.data.chat import format_prompt, render
from igrpo_megatron.data.examples import DataError, Example

logger = logging.getLogger(__name__)


def _over_budget(e: Example, stage1: list[int], tokenizer, cfg) -> str:
    """Why ``e`` does not fit the prompt budget ("" when it does)."""
    limit = cfg.rollout.max_prompt_tokens
    if len(stage1) > limit:
        return (f"its stage-1 prompt is {len(stage1)} tokens, over rollout.max_prompt_tokens={limit}")
    if cfg.igrpo.num_drafts == 0:
        return ""
    prefix, suffix = refinement_frame(
        e.question + cfg.data.user_suffix, system_prompt=cfg.data.system_prompt,
        render=lambda m: render(tokenizer, m), encode=lambda text: tokenizer.encode(text, add_special_tokens=False))
    frame = len(prefix) + len(suffix)
    elision = len(tokenizer.encode(DEFAULT_TEMPLATE.elision, add_special_tokens=False))
    room = draft_budget(frame, limit, cfg.igrpo.max_draft_tokens) - elision
    if room < MIN_DRAFT_ROOM:
        return (f"its stage-2 prompt without the draft is {frame} tokens of rollout.max_prompt_tokens={limit}, "
                f"leaving {room} for a draft (igrpo.max_draft_tokens={cfg.igrpo.max_draft_tokens}, elision "
                f"marker {elision})")
    return ""


def tokenize_prompts(examples: list[Example], tokenizer, cfg) -> tuple[list[Example], dict[str, list[int]]]:
    """``(examples that fit, {example id: stage-1 prompt ids})``; raises :class:`DataError` on the
    first that does not fit unless ``data.skip_malformed``. Deterministic, so every rank keeps the
    same examples."""
    kept, ids, skipped = [], {}, 0
    for e in examples:
        stage1 = format_prompt(tokenizer, build_prompt_messages(e.question, cfg.data.system_prompt, cfg.data.user_suffix))
        why = _over_budget(e, stage1, tokenizer, cfg)
        if not why:
            kept.append(e)
            ids[e.id] = stage1
            continue
        if not cfg.data.skip_malformed:
            raise DataError(f"{e.source}: row {e.row}: {why}; shorten or drop the row, raise "
                            f"rollout.max_prompt_tokens, or set data.skip_malformed=true to skip such rows")
        skipped += 1
    if skipped:
        logger.warning("%s: skipped %d of %d prompts over the prompt budget (rollout.max_prompt_tokens=%d)",
                       examples[0].source, skipped, len(examples), cfg.rollout.max_prompt_tokens)
    if not kept:
        raise DataError(f"{examples[0].source}: no prompt fits rollout.max_prompt_tokens="
                        f"{cfg.rollout.max_prompt_tokens}; raise it")
    return kept, ids
