"""Run the benchmarks against rollout servers: prompt, sample k completions, score, aggregate.

Generation goes through the project's rollout client (token ids in and out, the same HTTP path
as training), so ``igrpo-eval`` needs servers started by ``igrpo-serve`` (or starts one itself,
see cli/eval.py). Each problem is scored with math-verify in the reward's worker processes as
soon as its k samples arrive, so scoring overlaps generation.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import asdict
from typing import Optional, Sequence

from igrpo_megatron.algorithms.igrpo import build_prompt_messages
from igrpo_megatron.config import Config, ConfigError, EvalConfig, RewardConfig
from igrpo_megatron.data.chat import format_prompt
from igrpo_megatron.eval.benchmarks import Problem, load_benchmark
from igrpo_megatron.eval.scores import summarize

log = logging.getLogger(__name__)


def check_eval_config(e: EvalConfig) -> None:
    """The eval section's own checks (config.validate covers the training sections)."""
    if not e.benchmarks:
        raise ConfigError("eval.benchmarks is empty; name at least one (e.g. [math500])")
    if e.samples is not None and e.samples < 1:
        raise ConfigError("eval.samples must be >= 1 or null (null: the paper's k per benchmark)")
    if e.samples is not None and any(k > e.samples for k in e.pass_k):
        raise ConfigError(f"eval.pass_k={e.pass_k} asks for k above eval.samples={e.samples}")
    if any(k < 1 for k in e.pass_k):
        raise ConfigError("eval.pass_k values must be >= 1")
    if not 0 < e.top_p <= 1 or e.temperature < 0:
        raise ConfigError("eval.top_p must be in (0, 1] and eval.temperature >= 0")
    if "{problem}" not in e.prompt_template:
        raise ConfigError("eval.prompt_template must contain {problem}")
    if e.max_tokens < 1:
        raise ConfigError("eval.max_tokens must be >= 1")


def prompt_messages(problem: str, e: EvalConfig) -> list[dict]:
    user = e.prompt_template.replace("{problem}", problem)
    if e.system_prompt == "training":
        return build_prompt_messages(user)
    return [{"role": "user", "content": user}]


async def score_completions(reward, problem: Problem, texts: Sequence[str]) -> list[dict]:
    """One record per completion: problem id, sample index, gold, math-verify correctness, text."""
    scores = await reward.score_async([(t, problem.answer, problem.problem) for t in texts])
    return [{"id": problem.id, "sample": j, "gold": problem.answer, "correct": r.accuracy >= 1.0,
             "timed_out": r.timed_out, "completion": t} for j, (t, r) in enumerate(zip(texts, scores))]


def summarize_records(records: Sequence[dict], k: int, pass_ks: Sequence[int]) -> dict:
    """avg@k / pass@k of records laid out problem by problem, k samples each (as produced here)."""
    if len(records) % k:
        raise ValueError(f"{len(records)} records is not a multiple of k={k}")
    table = [[r["correct"] for r in records[i:i + k]] for i in range(0, len(records), k)]
    summary = summarize(table, pass_ks)
    summary["timeouts"] = sum(bool(r.get("timed_out")) for r in records)
    summary["truncated"] = sum(r.get("finish_reason") == "length" for r in records)
    return summary


async def _run_benchmark(problems: list[Problem], k: int, cfg: Config, tokenizer, client, reward) -> list[dict]:
    """Sample k completions per problem (scored as they arrive); records in problem, sample order."""
    from igrpo_megatron.rollout import SamplingParams

    e, limit = cfg.eval, cfg.rollout.max_model_len

    async def one(i: int, p: Problem) -> list[dict]:
        ids = format_prompt(tokenizer, prompt_messages(p.problem, e))
        room = limit - len(ids)
        if room < 1:
            raise ConfigError(f"{p.id}: the prompt takes {len(ids)} tokens, rollout.max_model_len is {limit}; "
                              f"raise rollout.max_model_len (and the server's) to evaluate it")
        params = SamplingParams(temperature=e.temperature, top_p=e.top_p, max_tokens=min(e.max_tokens, room),
                                seed=e.seed + i)
        samples = await client.generate(ids, n=k, params=params)
        texts = [tokenizer.decode(s.token_ids, skip_special_tokens=True) for s in samples]
        records = await score_completions(reward, p, texts)
        for rec, s in zip(records, samples):
            rec.update(finish_reason=s.finish_reason, prompt_tokens=len(ids), completion_tokens=len(s.token_ids))
        return records

    try:
        per_problem = await asyncio.gather(*(one(i, p) for i, p in enumerate(problems)))
    finally:
        await client.aclose()
    return [rec for recs in per_problem for rec in recs]


def evaluate(cfg: Config, server_urls: Sequence[str], api_key: str, tokenizer=None,
             output_dir: Optional[str] = None) -> dict:
    """Evaluate every ``cfg.eval.benchmarks`` entry on the servers; return (and write) the results.

    Writes ``<output_dir>/<benchmark>.jsonl`` (every sample) and ``results.json`` (the summaries and
    the average of avg@k over benchmarks, the paper's "Avg" column).
    """
    from igrpo_megatron.rewards import make_reward
    from igrpo_megatron.rollout import RolloutClient

    e = cfg.eval
    check_eval_config(e)
    if tokenizer is None:
        from igrpo_megatron.data import load_tokenizer

        tokenizer = load_tokenizer(cfg.model)
    output_dir = output_dir or e.output_dir
    os.makedirs(output_dir, exist_ok=True)
    loaded = [load_benchmark(spec, e.data_dir, e.limit) for spec in e.benchmarks]  # fail before generating
    reward_cfg = RewardConfig(kind="math_verify", num_workers=cfg.reward.num_workers, timeout_s=cfg.reward.timeout_s)
    results: dict = {"benchmarks": {}, "protocol": asdict(e)}
    client = RolloutClient.from_config(cfg.rollout, server_urls, api_key)
    with make_reward(reward_cfg) as reward:
        for bench, problems in loaded:
            k = e.samples or bench.samples
            records = asyncio.run(_run_benchmark(problems, k, cfg, tokenizer, client, reward))
            with open(os.path.join(output_dir, f"{bench.name}.jsonl"), "w", encoding="utf-8") as f:
                for rec in records:
                    f.write(json.dumps(rec) + "\n")
            summary = summarize_records(records, k, e.pass_k)
            results["benchmarks"][bench.name] = summary
            log.info("%s: avg@%d = %.4f over %d problems", bench.name, k, summary[f"avg@{k}"], len(problems))
    avgs = [s[f"avg@{s['samples']}"] for s in results["benchmarks"].values()]
    results["average"] = sum(avgs) / len(avgs)
    with open(os.path.join(output_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    return results
