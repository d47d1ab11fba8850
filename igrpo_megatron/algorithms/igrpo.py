"""The iGRPO wrapper's own pieces (Iterative GRPO, arXiv 2602.09000): best-draft selection, the
prompt wording for both stages, fitting a draft into the prompt budget, and DAPO's
dynamic-sampling filter.

This module owns ALL prompt wording of the project (stage-1 / GRPO prompts and stage-2 refinement
prompts), so one edit changes what the model is told everywhere. Functions that touch token ids
take tokenizer callables (``encode``, ``render``) instead of importing transformers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

# ------------------------------------------------------------------------------ draft selection


def select_best_drafts(rewards: Tensor, accuracy: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Stage 1 -> stage 2: the index of the best of N drafts per prompt, ``rewards: [P, N]``.

    Returns ``(indices [P] int64, all_zero [P] bool)``.

    Tie rule (the paper has none): among drafts sharing the maximum reward, the most accurate
    (when ``accuracy [P, N]`` is given), then the FIRST index, i.e. the earliest sampled. With the
    paper's accuracy + format reward a right answer without the format ties a wrong one with it, and
    the right one is the better context to refine. Beyond that samples are i.i.d., so the first is as
    good as a random pick, and it makes the selection -- hence the whole run -- reproducible.

    ``all_zero`` marks prompts where no draft earned any reward (max <= 0). The paper keeps those
    prompts: argmax still returns a draft (here draft 0) and the refinement prompt tells the model the
    draft may be wrong. They are reported so the trainer can log how often stage 2 starts from a
    failed draft (it falls as the policy improves: the "dynamic self-conditioning").
    """
    if rewards.dim() != 2 or rewards.shape[1] < 1:
        raise ValueError(f"rewards must be [num_prompts, num_drafts] with num_drafts >= 1, got {tuple(rewards.shape)}")
    if torch.isnan(rewards).any():
        raise ValueError("draft rewards contain NaN; the reward function must score every draft")
    if accuracy is not None and accuracy.shape != rewards.shape:
        raise ValueError(f"accuracy {tuple(accuracy.shape)} must have the shape of rewards {tuple(rewards.shape)}")
    best = rewards.amax(dim=1, keepdim=True)
    tied = rewards == best
    if accuracy is not None:
        tied_acc = torch.where(tied, accuracy.to(rewards.dtype), -torch.inf)
        tied &= tied_acc == tied_acc.amax(dim=1, keepdim=True)
    positions = torch.arange(rewards.shape[1], device=rewards.device).expand_as(rewards)
    # Explicit first-among-maxima rather than relying on argmax's tie behaviour.
    indices = torch.where(tied, positions, rewards.shape[1]).amin(dim=1)
    return indices, best.squeeze(1) <= 0


def dynamic_sampling_mask(rewards: Tensor) -> Tensor:
    """DAPO dynamic sampling (Yu et al. 2025): ``keep [P]`` is False for groups whose G rewards are
    all equal. Their group-relative advantages are all zero, so they add no gradient but still dilute
    the batch (token-mean denominators, effective batch size)."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [num_prompts, group_size], got {tuple(rewards.shape)}")
    return rewards.amax(dim=1) != rewards.amin(dim=1)


# ------------------------------------------------------------------------------ prompt wording

SYSTEM_PROMPT = (
    "Reason step by step as an internal monologue inside <think> </think>, then give the final "
    "answer inside <answer> </answer>. If the request contains a draft solution, treat it as "
    "guidance, not ground truth: it may be wrong. Write a strictly better solution: fix its "
    "mistakes, fill gaps, strengthen the justification, make it clearer. Do not repeat the draft "
    "verbatim; if its answer is wrong, correct it."
)


@dataclass(frozen=True)
class RefinementTemplate:
    """How the stage-2 prompt q' joins the question q and the best draft (the paper does not give the
    joining text; this is the project's). The draft sits between unique tags so the model can tell
    where it starts and ends, even when it is cut (see :func:`fit_draft`)."""

    system_prompt: str = SYSTEM_PROMPT
    draft_open: str = "<draft>"
    draft_close: str = "</draft>"
    user_template: str = (
        "{question}\n\n"
        "A draft solution (may be wrong):\n"
        "{draft_open}\n{draft}\n{draft_close}\n\n"
        "Write a new, complete solution that improves on the draft."
    )
    # Stands in for the middle of a draft too long for the prompt.
    elision: str = "\n\n[... middle of the draft omitted ...]\n\n"

    def user_message(self, question: str, draft: str) -> str:
        return self.user_template.format(question=question, draft=draft, draft_open=self.draft_open,
                                         draft_close=self.draft_close)


DEFAULT_TEMPLATE = RefinementTemplate()
Messages = list[dict[str, str]]


def build_prompt_messages(question: str, system_prompt: Optional[str] = None, user_suffix: str = "") -> Messages:
    """Chat messages of a stage-1 draft / plain GRPO prompt: the system instruction (None: the
    paper's) and the question followed by ``user_suffix`` (``data.user_suffix``)."""
    system = DEFAULT_TEMPLATE.system_prompt if system_prompt is None else system_prompt
    return [{"role": "system", "content": system}, {"role": "user", "content": question + user_suffix}]


def build_refinement_messages(question: str, draft: str, system_prompt: Optional[str] = None,
                              template: RefinementTemplate = DEFAULT_TEMPLATE) -> Messages:
    """Chat messages of the stage-2 prompt q' = q followed by the delimited best draft."""
    system = template.system_prompt if system_prompt is None else system_prompt
    return [{"role": "system", "content": system},
            {"role": "user", "content": template.user_message(question, draft)}]


# ------------------------------------------------------------------------------ prompt budget


MIN_DRAFT_ROOM = 2  # a cut draft keeps at least its first and its last token


def draft_budget(prompt_len: int, max_prompt_tokens: int, max_draft_tokens: Optional[int] = None) -> int:
    """Tokens a draft may take in a refinement prompt whose other tokens number ``prompt_len``."""
    budget = max_prompt_tokens - prompt_len
    return budget if max_draft_tokens is None else min(budget, max_draft_tokens)


def fit_draft(draft_token_ids: Sequence[int], prompt_len: int, max_prompt_tokens: int, *,
              elision_ids: Sequence[int], max_draft_tokens: Optional[int] = None,
              head_fraction: float = 0.25) -> list[int]:
    """Cut a draft so that ``prompt_len`` (the refinement prompt's tokens WITHOUT the draft) plus the
    draft fits in ``max_prompt_tokens`` and the draft in ``max_draft_tokens`` (if set).

    The paper allows 1,024 prompt and 4,096 completion tokens and does not say how a stage-2 prompt
    holding a long draft fits. Rule: a draft that fits is kept whole; otherwise its first
    ``head_fraction`` of the budget and its LAST tokens are kept, joined by ``elision_ids``. The tail
    holds what refinement needs most -- the draft's conclusion and its ``<answer>`` -- and the head
    its approach; the middle (long exploratory reasoning) is what a reader can best lose. The marker
    tells the model text is missing, so it does not mistake the cut for a reasoning gap to "fix".
    """
    budget = draft_budget(prompt_len, max_prompt_tokens, max_draft_tokens)
    draft = list(draft_token_ids)
    if len(draft) <= budget:
        return draft
    room = budget - len(elision_ids)
    if room < MIN_DRAFT_ROOM:
        raise ValueError(
            f"no room for the draft: the refinement prompt without it takes {prompt_len} of "
            f"{max_prompt_tokens} tokens (draft budget {budget}, elision marker {len(elision_ids)}); "
            f"raise rollout.max_prompt_tokens / igrpo.max_draft_tokens or drop over-long questions"
        )
    head = max(1, int(room * head_fraction))
    tail = room - head
    return draft[:head] + list(elision_ids) + draft[len(draft) - tail:]


PLACEHOLDER = "<<IGRPO_DRAFT_PLACEHOLDER>>"  # where a quoted sample's own token ids go


def frame_ids(messages: Messages, *, render: Callable[[Messages], str],
              encode: Callable[[str], list[int]]) -> tuple[list[int], list[int]]:
    """The token ids of rendered ``messages`` before and after the one :data:`PLACEHOLDER` they hold."""
    text = render(messages)
    if text.count(PLACEHOLDER) != 1:
        raise ValueError("the chat template did not keep the draft placeholder exactly once; "
                         "refinement_prompt_ids needs a template that renders message content verbatim")
    before, after = text.split(PLACEHOLDER)
    return encode(before), encode(after)


def spliced_prompt_ids(messages: Messages, sample_ids: Sequence[int], *, render: Callable[[Messages], str],
                       encode: Callable[[str], list[int]], max_prompt_tokens: int,
                       max_draft_tokens: Optional[int] = None, elision: str = DEFAULT_TEMPLATE.elision) -> list[int]:
    """``messages`` rendered with ``sample_ids`` (as sampled, fitted by :func:`fit_draft`) at the placeholder:
    the length is exact, and the model reads the very tokens it produced. iGRPO's draft, Critique-GRPO's
    previous solution and Self-Verification's solution go into their prompts this way."""
    prefix, suffix = frame_ids(messages, render=render, encode=encode)
    fitted = fit_draft(sample_ids, len(prefix) + len(suffix), max_prompt_tokens,
                       elision_ids=encode(elision), max_draft_tokens=max_draft_tokens)
    return prefix + fitted + suffix


def refinement_frame(question: str, *, render: Callable[[Messages], str], encode: Callable[[str], list[int]],
                     system_prompt: Optional[str] = None,
                     template: RefinementTemplate = DEFAULT_TEMPLATE) -> tuple[list[int], list[int]]:
    """The stage-2 prompt's token ids before and after the draft (see :func:`refinement_prompt_ids`)."""
    return frame_ids(build_refinement_messages(question, PLACEHOLDER, system_prompt, template),
                     render=render, encode=encode)


def refinement_prompt_ids(question: str, draft_token_ids: Sequence[int], *,
                          render: Callable[[Messages], str], encode: Callable[[str], list[int]],
                          max_prompt_tokens: int, max_draft_tokens: Optional[int] = None,
                          system_prompt: Optional[str] = None,
                          template: RefinementTemplate = DEFAULT_TEMPLATE) -> list[int]:
    """Token ids of the stage-2 prompt, with the draft's OWN token ids (as sampled) spliced in.

    ``render`` applies the chat template to messages and returns text (e.g.
    ``lambda m: tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)``);
    ``encode`` turns text into ids without adding special tokens. The prompt is rendered around a
    placeholder, the text on either side is encoded, and the fitted draft goes between -- so the
    length is exact, and the model conditions on the very tokens it produced in stage 1.
    """
    return spliced_prompt_ids(build_refinement_messages(question, PLACEHOLDER, system_prompt, template),
                              draft_token_ids, render=render, encode=encode, max_prompt_tokens=max_prompt_tokens,
                              max_draft_tokens=max_draft_tokens, elision=template.elision)
