"""A tiny model that answers like a (bad) reasoning model, so eval scores are not all zero.

A random tiny model never writes ``\\boxed{}``, so every score would be 0 and a wrong avg@k,
pass@k or majority vote would go unnoticed. A few hundred Adam steps teach the tiny Qwen2 to
answer any prompt with one of a few boxed answers at set rates, whatever the question: its
samples then have a known spread of right and wrong, numbers and letters.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

# What the trained model answers, and how often (at temperature 1).
ANSWERS = {"\\boxed{5}": 0.4, "\\boxed{7}": 0.2, "\\boxed{B}": 0.25, "\\boxed{C}": 0.15}


def make_answering_model(src_hf: str, out_dir: str, prompts: list[list[int]], steps: int = 80,
                         seed: int = 0) -> str:
    """Fine-tune ``src_hf`` so that after any of ``prompts`` it samples ANSWERS at their rates."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(src_hf)
    model = AutoModelForCausalLM.from_pretrained(src_hf, torch_dtype=torch.float32)
    targets = [(tok.encode(a, add_special_tokens=False) + [tok.eos_token_id], w) for a, w in ANSWERS.items()]
    seqs, weights, masks = [], [], []
    for p in prompts:
        for ids, w in targets:
            seqs.append(p + ids)
            masks.append([0] * len(p) + [1] * len(ids))
            weights.append(w)
    width = max(map(len, seqs))
    x = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
    m = torch.tensor([mk + [0] * (width - len(mk)) for mk in masks], dtype=torch.float32)
    w = torch.tensor(weights)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        logits = model(x).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
        # The expected NLL under ANSWERS' rates: its minimum is the model sampling them at those rates.
        loss = ((nll * m[:, 1:]).sum(1) * w).sum() / len(prompts)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    for name in ("generation_config.json",):
        src = os.path.join(src_hf, name)
        if os.path.exists(src):
            with open(src) as f, open(os.path.join(out_dir, name), "w") as g:
                g.write(f.read())
    return out_dir


def write_jsonl(path, rows: list[dict]) -> str:
    """``rows`` as a JSONL file (a local benchmark or prompt file); returns its path."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@dataclass
class Greedy:
    prompt_ids: list[int]
    text: str
    correct: bool


def transformers_greedy(hf: str, eval_config: str, max_new_tokens: int) -> list[Greedy]:
    """transformers' greedy ``generate`` on every problem of the config's benchmarks, in order, from
    the prompt igrpo-eval builds, scored as igrpo-eval scores (math-verify, or the letter read)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from igrpo_megatron.config import load_config
    from igrpo_megatron.data.chat import format_prompt
    from igrpo_megatron.eval import extract_choice, load_benchmark
    from igrpo_megatron.eval.runner import prompt_messages
    from igrpo_megatron.rewards.math_verify_reward import accuracy

    cfg = load_config(eval_config, training=False)
    tok = AutoTokenizer.from_pretrained(hf)
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    out = []
    for spec in cfg.eval.benchmarks:
        for p in load_benchmark(spec)[1]:
            ids = format_prompt(tok, prompt_messages(p.text, cfg.eval, cfg.data))
            with torch.no_grad():
                gen = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=max_new_tokens,
                                     pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else 0)
            text = tok.decode(gen[0, len(ids):], skip_special_tokens=True)
            ok = (extract_choice(text, len(p.choices), p.choices) == p.answer if p.choices
                  else accuracy(text, p.answer) == 1.0)
            out.append(Greedy(ids, text, ok))
    return out
