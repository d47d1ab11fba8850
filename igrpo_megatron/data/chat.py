"""The run's tokenizer, and prompts rendered through its own chat template.

The prompt wording belongs to the algorithm (igrpo_megatron/algorithms/igrpo.py), so this takes
ready messages and only renders them. Two facts about a template are read from the template itself
rather than left to flags users forget:

- whether its generation prompt already opens ``<think>`` (DeepSeek-R1 distills end the prompt with
  ``<think>\\n``): the completion then starts inside the monologue, and the format reward must
  know, or it scores 0 for every sample (:func:`think_prefilled`);
- whether it has a system role at all (some templates raise on one, others drop it silently):
  without one, the system instruction is folded into the first user turn (:func:`render`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

_PROBE = "igrpo-probe-7f3a"


def load_tokenizer(model_cfg):
    """The run's tokenizer: ``model.tokenizer_path``, else the one beside ``model.hf_path``."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_cfg.tokenizer_path or model_cfg.hf_path)


def _check(tokenizer, messages: Sequence[dict]) -> None:
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
        raise ValueError(f"tokenizer {name} has no chat template; use a chat/instruct tokenizer or set "
                         f"tokenizer.chat_template (model.tokenizer_path picks the tokenizer)")
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise ValueError(f"message {i} must be a dict with string 'role' and 'content', got {m!r}")


def _apply(tokenizer, messages, add_generation_prompt: bool = True) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


@functools.lru_cache(maxsize=8)
def has_system_role(tokenizer) -> bool:
    """Whether the template renders a system message's text (it may raise, or drop it silently)."""
    try:
        return _PROBE in _apply(tokenizer, [{"role": "system", "content": _PROBE}, {"role": "user", "content": "q"}])
    except Exception:  # noqa: BLE001 - jinja's TemplateError or the template's own raise_exception
        return False


def think_prefilled(tokenizer) -> bool:
    """Whether the generation prompt ends inside an opened ``<think>`` block."""
    return _apply(tokenizer, [{"role": "user", "content": _PROBE}]).rstrip().endswith("<think>")


def fold_system(messages: Sequence[dict]) -> list[dict]:
    """The system message's text put in front of the first user turn (for templates without a system role)."""
    if not messages or messages[0]["role"] != "system":
        return list(messages)
    system, rest = messages[0]["content"], list(messages[1:])
    for i, m in enumerate(rest):
        if m["role"] == "user":
            rest[i] = {**m, "content": f"{system}\n\n{m['content']}"}
            return rest
    return [{"role": "user", "content": system}, *rest]


def render(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
    """``messages`` as the chat template's text, the system turn folded in where the template has none."""
    _check(tokenizer, messages)
    if messages and messages[0]["role"] == "system" and not has_system_role(tokenizer):
        messages = fold_system(messages)
    return _apply(tokenizer, messages, add_generation_prompt)


def format_prompt(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of ``messages`` ([{"role": ..., "content": ...}, ...]) ending in the assistant turn.

    The rendered text carries the template's own special tokens (BOS included), so it is encoded
    without adding more."""
    return tokenizer.encode(render(tokenizer, messages, add_generation_prompt), add_special_tokens=False)


def resolve_think_prefill(reward_cfg, tokenizer):
    """``reward_cfg`` with ``think_prefilled: auto`` replaced by what the template does."""
    if reward_cfg.think_prefilled != "auto":
        return reward_cfg
    return dataclasses.replace(reward_cfg, think_prefilled=think_prefilled(tokenizer))
