"""The whole loop on one CPU machine: ``python -m igrpo_megatron.demo`` (what ``make demo`` runs).

1. Builds a tiny Qwen2-shaped model and its tokenizer locally (no downloads).
2. Launches ``torchrun`` with 2 ranks (Megatron TP=2, gloo); rank 0 starts a real vLLM server
   (the CPU build) on the tiny model.
3. Supervised warm-up IN MEGATRON, through the same train step the RL update uses (``sft_loss``
   instead of the policy loss), on the synthetic task's answer format. A random model scores 0
   on every sample, so group-relative advantages would all be 0 and RL could not start; the
   warm-up is kept short on purpose so accuracy stays partial and RL has room to improve it.
4. Refits the server, measures accuracy, runs iGRPO (4 drafts + 4 refinements per prompt),
   measures again and prints both.

The accuracy printed is single-shot accuracy (plain prompts, no draft: how the trained model is
used) at the training temperature, 8 samples on each of 128 questions drawn with their own seed
(1024 samples: a standard error of about 0.013).
They are not held out: one-digit addition has 100 distinct questions and training sees them all.
What the figure shows is the policy getting better at its task, as the paper's training curves do.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import time

RESULT_FILE = "demo_result.json"  # accuracy before/after RL, read by benchmarks/grpo_vs_igrpo.py
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_CONFIG = os.path.join(_REPO, "configs", "demo.yaml")


def solution_text(question: str, answer: str) -> str:
    """The completion the warm-up teaches: the reward's format, the sum written out, the answer.

    Writing the expression next to its result lets a two-layer model attend to the operands
    right where it produces the digits.
    """
    expression = question.removeprefix("What is ").removesuffix("?")
    return f"<think>{expression} = {answer}</think> <answer>{answer}</answer>"


def build_model_and_tokenizer(model_dir: str) -> None:
    """A tiny Qwen2 whose byte-level BPE is trained on the demo's own text (prompts included).

    The iGRPO system prompt is English prose; a tokenizer trained on arithmetic alone spends ~360
    tokens on it, and a two-layer model then has to find the question's digits behind them. Trained
    on the prompts too, BPE packs a stage-1 prompt into ~120 tokens: 3x less compute per step and
    a much easier copy for the model.
    """
    from igrpo_megatron.algorithms.igrpo import build_prompt_messages, build_refinement_messages
    from igrpo_megatron.data.synthetic import synthetic_examples
    from igrpo_megatron.demo.tiny import make_model, make_tokenizer

    corpus = []
    for e in synthetic_examples(400, seed=0, max_operand=99, ops="+-*"):
        answer = solution_text(e.question, e.answer)
        for messages in (build_prompt_messages(e.question), build_refinement_messages(e.question, answer)):
            corpus.append(" ".join(f"{m['role']}\n{m['content']}" for m in messages) + " assistant\n" + answer)
    tokenizer = make_tokenizer(model_dir, vocab_size=512, corpus=corpus)
    make_model(model_dir, arch="qwen2", vocab_size=len(tokenizer), with_tokenizer=False)


def _wrong(answer: str, rng: random.Random) -> str:
    try:
        return str(int(answer) + rng.choice([-3, -2, -1, 1, 2, 3]))
    except ValueError:
        return answer + "0"


def warmup_batch(trainer, items, rng: random.Random):
    """SFT rows for ``items``: half plain prompts, half refinement prompts whose draft is right or
    wrong, all answered correctly (so stage 2 learns to keep a right draft and fix a wrong one)."""
    import torch

    from igrpo_megatron.algorithms.igrpo import build_prompt_messages, refinement_prompt_ids
    from igrpo_megatron.batch import pack_rows
    from igrpo_megatron.data.chat import format_prompt

    tok = trainer.tokenizer
    eos = [tok.eos_token_id]
    prompts, targets = [], []
    for i, item in enumerate(items):
        target = tok.encode(solution_text(item.question, item.answer), add_special_tokens=False) + eos
        if i % 2 == 0:
            prompt = format_prompt(tok, build_prompt_messages(item.question))
        else:
            draft_answer = item.answer if rng.random() < 0.5 else _wrong(item.answer, rng)
            draft = tok.encode(solution_text(item.question, draft_answer), add_special_tokens=False)
            prompt = refinement_prompt_ids(
                item.question, draft, render=trainer.method.render, encode=trainer.method.encode,
                max_prompt_tokens=trainer.cfg.rollout.max_prompt_tokens)
        prompts.append(list(prompt))
        targets.append(target)
    return pack_rows(prompts, targets, torch.zeros(len(prompts)), trainer.pad_id)


def set_learning_rate(policy, lr: float) -> None:
    """Pin the LR schedule of ``policy`` at ``lr`` (the demo's schedule is constant): supervised
    warm-up takes far larger steps than the policy-gradient updates can."""
    for group in policy.optimizer.param_groups:
        group["max_lr"] = group["min_lr"] = lr


def warm_up(trainer, steps: int, batch_size: int, seed: int) -> None:
    """``steps`` supervised steps on the synthetic task through the policy's own train step."""
    from igrpo_megatron.algorithms.losses import sft_loss
    from igrpo_megatron.batch import shard_for_data_parallel
    from igrpo_megatron.data.synthetic import synthetic_examples
    from igrpo_megatron.models import broadcast_object

    rng = random.Random(seed)
    d = trainer.cfg.data
    data = synthetic_examples(steps * batch_size, seed + 1, d.synthetic_max_operand, d.synthetic_ops,
                              d.synthetic_num_operands)
    par = trainer.par
    for step in range(steps):
        items = data[step * batch_size:(step + 1) * batch_size]
        batch = warmup_batch(trainer, items, rng) if trainer.is_driver else None
        batch = broadcast_object(batch)
        shard = shard_for_data_parallel(batch, par.dp_rank, par.dp_size, trainer.cfg.train.micro_batch_size,
                                        trainer.pad_id)
        metrics = trainer.policy.train_step(
            shard, lambda logprobs, entropy, micro, den: sft_loss(logprobs, micro.response_mask, den["num_tokens"]))
        if trainer.is_driver and (step % 25 == 0 or step == steps - 1):
            print(f"[demo] warm-up step {step + 1:>3}/{steps}  nll {float(metrics['sft_nll']):.3f}", flush=True)


def task_accuracy(trainer, num_prompts: int, samples: int, seed: int) -> float:
    """Single-shot accuracy (plain prompts) on ``num_prompts`` synthetic questions drawn with
    ``seed``, ``samples`` each, via the rollout server."""
    from igrpo_megatron.data.synthetic import synthetic_examples

    d = trainer.cfg.data
    items = synthetic_examples(num_prompts, seed, d.synthetic_max_operand, d.synthetic_ops, d.synthetic_num_operands)
    return accuracy_on(trainer, [(e.question, e.answer) for e in items], samples)


def accuracy_on(trainer, items: list[tuple[str, str]], samples: int) -> float:
    """Single-shot accuracy on ``(question, answer)`` pairs, ``samples`` each, via the rollout
    server, with the run's stage-1 prompt (``data.system_prompt`` / ``data.user_suffix``); NaN off
    the driver."""
    from igrpo_megatron.algorithms.igrpo import build_prompt_messages
    from igrpo_megatron.data.chat import format_prompt

    if not trainer.is_driver:
        return float("nan")
    d = trainer.cfg.data

    async def run():
        jobs = []
        for question, answer in items:
            ids = format_prompt(trainer.tokenizer, build_prompt_messages(question, d.system_prompt, d.user_suffix))
            jobs.append(trainer.method.sample_and_score(ids, samples, question, answer))
        return await asyncio.gather(*jobs)

    results = trainer.conn.loop.run_until_complete(run())
    accuracy = [a for _, _, acc, _ in results for a in acc]
    return sum(accuracy) / len(accuracy)


def worker(argv: list[str]) -> None:
    """Body of each torchrun rank."""
    from igrpo_megatron import preemption
    from igrpo_megatron.config import load_config
    from igrpo_megatron.trainer import Trainer

    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=DEMO_CONFIG)
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--warmup-batch", type=int, default=16)
    parser.add_argument("--warmup-lr", type=float, default=1e-3)
    parser.add_argument("--eval-prompts", type=int, default=128)
    parser.add_argument("--eval-samples", type=int, default=8)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)  # the launcher puts options after some overrides
    cfg = load_config(args.config, args.overrides)
    # SIGTERM (torchrun, when a rank dies) then exits through Trainer.close() after the grace,
    # so the vLLM server (its own process group) does not outlive the demo.
    preemption.install_handlers()
    if int(os.environ.get("RANK", "0")) == 0:
        print("[demo] building the Megatron model and starting the vLLM server (~30-60 s)", flush=True)
    with Trainer(cfg) as trainer:
        say = print if trainer.is_driver else (lambda *a, **k: None)
        say(f"[demo] Megatron TP={trainer.par.tp_size} DP={trainer.par.dp_size}; vLLM server up", flush=True)
        set_learning_rate(trainer.policy, args.warmup_lr)
        warm_up(trainer, args.warmup_steps, args.warmup_batch, cfg.train.seed)
        set_learning_rate(trainer.policy, cfg.optim.lr)
        trainer.refit()
        before = task_accuracy(trainer, args.eval_prompts, args.eval_samples, seed=cfg.data.seed + 99)
        say(f"[demo] accuracy after warm-up (before RL): {before:.3f}", flush=True)
        t0 = time.time()
        trainer.fit()
        after = task_accuracy(trainer, args.eval_prompts, args.eval_samples, seed=cfg.data.seed + 99)
        say(f"[demo] {trainer.step_idx} iGRPO steps in {time.time() - t0:.0f} s", flush=True)
        say(f"[demo] accuracy before RL {before:.3f} -> after RL {after:.3f} ({after - before:+.3f})", flush=True)
        if trainer.is_driver:
            with open(os.path.join(cfg.train.output_dir, RESULT_FILE), "w") as f:
                json.dump({"accuracy_before": before, "accuracy_after": after, "steps": trainer.step_idx}, f)
        say(f"[demo] metrics: {os.path.join(cfg.train.output_dir, 'metrics.jsonl')}; "
            f"plots: igrpo-plot {cfg.train.output_dir}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m igrpo_megatron.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/demo", help="where the tiny model and the run go")
    parser.add_argument("--nproc", type=int, default=2, help="training ranks (Megatron TP = this)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args(argv)
    if args.worker:
        worker(rest)
        return 0
    model_dir = os.path.join(args.workdir, "model")
    print(f"[demo] building a tiny Qwen2 model and tokenizer in {model_dir}", flush=True)
    build_model_and_tokenizer(model_dir)
    run_dir = os.path.join(args.workdir, "run")
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run every time: metrics.jsonl appends
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           "-m", "igrpo_megatron.demo", "--worker", f"model.hf_path={model_dir}", f"train.output_dir={run_dir}",
           f"parallel.tp={args.nproc}", "train.resume=false", *rest]
    # Megatron warns once per rank that Apex / Transformer Engine are absent (expected on CPU).
    env = {"PYTHONWARNINGS": "ignore::UserWarning", **os.environ, "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.call(cmd, env=env)
