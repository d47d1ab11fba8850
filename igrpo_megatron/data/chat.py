"""The run's tokenizer, and prompt token ids through its own chat template.

The system prompt wording belongs to the algorithm (igrpo_megatron/algorithms/igrpo.py), so this
takes ready messages and only renders them.
"""
from __future__ import annotations

from typing import Sequence


def load_tokenizer(model_cfg):
    """The run's tokenizer: ``model.tokenizer_path``, else the one beside ``model.hf_path``."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_cfg.tokenizer_path or model_cfg.hf_path)


def format_prompt(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of ``messages`` ([{"role": ..., "content": ...}, ...]) ending in the assistant turn."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
        raise ValueError(f"tokenizer {name} has no chat template; use a chat/instruct tokenizer or set "
                         f"tokenizer.chat_template (model.tokenizer_path picks the tokenizer)")
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise ValueError(f"message {i} must be a dict with string 'role' and 'content', got {m!r}")
    return list(tokenizer.apply_chat_template(list(messages), tokenize=True, return_dict=False,
                                              add_generation_prompt=add_generation_prompt))
