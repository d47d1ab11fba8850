"""Tiny Qwen2 / Llama models and a byte-level BPE tokenizer, built locally (no hub).

Used by the CPU demo and by every test that needs a real Hugging Face folder that transformers,
Megatron (through ``igrpo_megatron.models``) and vLLM all load. vLLM's CPU attention needs
``head_dim >= 32``, so the defaults keep hidden / heads = 32.
"""
from __future__ import annotations

import json
import os
import random
from typing import Iterable, Optional

# "<|endoftext|>" is in the vocabulary because transformers loads a tokenizer next to a Qwen2
# config.json as Qwen2Tokenizer, which adds it when missing (and the vocab would outgrow the model).
SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _default_corpus(n: int = 800, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        op = rng.choice("+-*")
        r = eval(f"{a}{op}{b}")  # noqa: S307 - our own integers
        lines.append(f"What is {a} {op} {b}? <think>{a} {op} {b} = {r}</think> <answer>{r}</answer>")
        lines.append(f"Draft: \\boxed{{{r}}} The answer is {r}. Improve the draft.")
    return lines


def make_tokenizer(out_dir: str, vocab_size: int = 320, corpus: Optional[Iterable[str]] = None):
    """Train a byte-level BPE on ``corpus`` (default: arithmetic text) and save it with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(corpus) if corpus is not None else _default_corpus(), trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    os.makedirs(out_dir, exist_ok=True)
    hf_tok.save_pretrained(out_dir)
    return hf_tok


def make_model(
    out_dir: str,
    arch: str = "qwen2",
    vocab_size: Optional[int] = None,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 256,
    tie_word_embeddings: bool = False,
    max_position_embeddings: int = 1024,
    seed: int = 0,
    with_tokenizer: bool = True,
    init_std: float = 0.02,
):
    """Save a randomly initialised ``arch`` model (and, by default, the tokenizer) to ``out_dir``.

    With ``vocab_size=None`` the vocabulary is the tokenizer's; a larger value leaves unused rows
    (useful to test odd vocabulary sizes that need TP padding).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    os.makedirs(out_dir, exist_ok=True)
    tok = make_tokenizer(out_dir) if with_tokenizer else None
    if vocab_size is None:
        if tok is None:
            raise ValueError("vocab_size is required when with_tokenizer=False")
        vocab_size = len(tok)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        initializer_range=init_std,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        torch_dtype="float32",
    )
    if arch == "qwen2":
        cfg, cls = Qwen2Config(**common), Qwen2ForCausalLM
    elif arch == "llama":
        cfg, cls = LlamaConfig(**common, attention_bias=False, mlp_bias=False), LlamaForCausalLM
    else:
        raise ValueError(f"unknown tiny arch {arch!r}; use qwen2 or llama")
    torch.manual_seed(seed)
    model = cls(cfg)
    with torch.no_grad():  # non-trivial norms so layout bugs in norm mapping show up in parity tests
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.05)
    model.save_pretrained(out_dir, safe_serialization=True)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}, f)
    return out_dir
