"""Prompts: loading (hub or local file, presets), synthetic arithmetic, chat formatting and the
resumable prompt iterator."""
from igrpo_megatron.data.chat import format_prompt, load_tokenizer
from igrpo_megatron.data.examples import DataError, Example
from igrpo_megatron.data.iterator import PromptIterator
from igrpo_megatron.data.loading import PRESETS, load_prompts, load_prompts_counted
from igrpo_megatron.data.synthetic import synthetic_examples

__all__ = ["DataError", "Example", "PRESETS", "PromptIterator", "format_prompt", "load_prompts",
           "load_tokenizer", "load_prompts_counted", "synthetic_examples"]
