"""Run the benchmarks against rollout servers: prompt, sample k completions, score, aggregate.

Generation goes through the project's rollout client (token ids in and out, the same HTTP path
as training), so ``igrpo-eval`` needs servers started by ``igrpo-serve`` (or starts them itself,
see cli/eval.py). A problem's k samples go out as requests of at most
``eval.samples_per_request``, so no request waits on more than that many generations of
``eval.max_tokens``, and the client spreads the requests over every server. Each request's
samples are scored as they return (math-verify in the reward's worker processes, letters here)
and appended to the benchmark's sample file at once, so an interrupted run loses at most the
requests in flight (eval/samples.py).

Sample j of problem i is drawn with seed ``eval.seed + i * EVAL_SEED_STRIDE + j``: vLLM gives the
m-th sample of a request with seed s the seed s + m, so a request for samples j..j+n-1 carries
the seed of sample j, and a sample is the same whichever request it was part of. A resumed run
therefore draws the samples an uninterrupted one would have.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

from igrpo_megatron.algorithms.igrpo import build_prompt_messages
from igrpo_megatron.config import EVAL_SEED_STRIDE, Config, ConfigError, DataConfig, EvalConfig, RewardConfig
from igrpo_megatron.data.chat import format_prompt
from igrpo_megatron.eval.benchmarks import Benchmark, Problem, load_benchmark
from igrpo_megatron.eval.choice import extract_choice
from igrpo_megatron.eval.report import paper_row, results_markdown
from igrpo_megatron.eval.samples import Key, SampleStore
from igrpo_megatron.eval.scores import summarize_records
from igrpo_megatron.rewards.extract import extract_answer

log = logging.getLogger(__name__)


def prompt_messages(problem: str, e: EvalConfig, data: DataConfig) -> list[dict]:
    """``eval.prompt_template`` filled in; with ``eval.system_prompt: training`` the prompt is the
    one the policy trained on (``data.system_prompt``, null: the paper's, and ``data.user_suffix``)."""
    user = e.prompt_template.replace("{problem}", problem)
    if e.system_prompt == "training":
        return build_prompt_messages(user, data.system_prompt, data.user_suffix)
    return [{"role": "user", "content": user}]


def vote_key(text: str) -> Optional[str]:
    """A math completion's answer as it votes in maj@k: the extracted answer without whitespace."""
    answer = extract_answer(text)
    return None if answer is None else "".join(answer.split())


async def score_completions(reward, problem: Problem, texts: Sequence[str], first: int = 0) -> list[dict]:
    """One record per completion (samples ``first``, ``first + 1``, ...): problem id, sample index,
    gold, the answer that votes, correctness (math-verify, or the letter for multiple choice), text."""
    if problem.choices:
        answers = [extract_choice(t, len(problem.choices), problem.choices) for t in texts]
        verdicts = [(a == problem.answer, False) for a in answers]
    else:
        answers = [vote_key(t) for t in texts]
        scores = await reward.score_async([(t, problem.answer, problem.problem) for t in texts])
        verdicts = [(r.accuracy >= 1.0, r.timed_out) for r in scores]
    return [{"id": problem.id, "sample": first + j, "gold": problem.answer, "answer": a, "correct": ok,
             "timed_out": timed_out, "completion": t}
            for j, (t, a, (ok, timed_out)) in enumerate(zip(texts, answers, verdicts))]


def request_chunks(missing: Sequence[int], per_request: int) -> list[tuple[int, int]]:
    """Sorted missing sample indices -> (first, count) requests of consecutive samples, each at most
    ``per_request`` (a request's samples have consecutive seeds)."""
    chunks: list[tuple[int, int]] = []
    for j in missing:
        if chunks and chunks[-1][0] + chunks[-1][1] == j and chunks[-1][1] < per_request:
            chunks[-1] = (chunks[-1][0], chunks[-1][1] + 1)
        else:
            chunks.append((j, 1))
    return chunks


@dataclass
class Job:
    """One benchmark's evaluation: its problems and prompts, k, and the samples saved so far."""

    bench: Benchmark
    problems: list[Problem]
    prompts: list[list[int]]
    k: int
    store: SampleStore
    saved: dict[Key, dict]

    def missing(self, i: int) -> list[int]:
        return [j for j in range(self.k) if (self.problems[i].id, j) not in self.saved]

    @property
    def missing_samples(self) -> int:
        return len(self.problems) * self.k - len(self.saved)


def _settings(e: EvalConfig, bench: Benchmark, k: int, model: str, problems: list[Problem],
              prompts: list[list[int]]) -> dict:
    """Everything that changes a benchmark's samples; two runs share samples only if these are equal."""
    content = json.dumps([[p.id, p.answer, ids] for p, ids in zip(problems, prompts)]).encode()
    return {"benchmark": bench.name, "model": model, "temperature": e.temperature, "top_p": e.top_p,
            "samples": k, "max_tokens": e.max_tokens, "seed": e.seed,
            "prompts_sha256": hashlib.sha256(content).hexdigest()}


def prepare(cfg: Config, tokenizer, model: str) -> list[Job]:
    """Load every benchmark, build its prompts and open its sample file; fails (one line) before
    any server starts on a bad benchmark, a bad field or samples saved with other settings."""
    e = cfg.eval
    e.validate()  # prepare() may get a Config that load_config did not build
    jobs = []
    for spec in e.benchmarks:
        bench, problems = load_benchmark(spec, e.data_dir, e.limit)
        prompts = [format_prompt(tokenizer, prompt_messages(p.text, e, cfg.data)) for p in problems]
        k = e.samples or bench.samples
        if any(pk > k for pk in e.pass_k or ()):
            raise ConfigError(f"eval.pass_k={e.pass_k} asks for k above {bench.name}'s {k} samples")
        store = SampleStore(e.output_dir, bench.name, _settings(e, bench, k, model, problems, prompts))
        jobs.append(Job(bench, problems, prompts, k, store, store.open()))
    return jobs


def required_model_len(jobs: Sequence[Job], e: EvalConfig) -> int:
    """The context a server needs: the longest prompt plus eval.max_tokens."""
    return max(len(ids) for job in jobs for ids in job.prompts) + e.max_tokens


def check_server_lengths(server_urls: Sequence[str], api_key: str, needed: int) -> None:
    """Refuse servers whose max_model_len cannot hold the longest prompt plus eval.max_tokens
    (vLLM would reject those requests one by one, or they would silently be cut short)."""
    from igrpo_megatron.rollout.admin import RolloutServerError, ServerAdmin

    for url in server_urls:
        try:
            models = ServerAdmin(url, api_key).request("GET", "/v1/models", timeout_s=30)["data"]
        except RolloutServerError as e:
            raise ConfigError(f"rollout.server_urls: cannot ask {url} for its max_model_len ({e})") from None
        length = min(m["max_model_len"] for m in models)
        if length < needed:
            raise ConfigError(f"{url} serves max_model_len={length}, the evaluation needs {needed} (longest "
                              f"prompt + eval.max_tokens); restart it with a larger rollout.max_model_len "
                              f"or lower eval.max_tokens")


class _Progress:
    """A per-benchmark bar: samples (with ETA), problems complete, generated tokens per second."""

    def __init__(self, job: Job):
        from tqdm import tqdm

        self.job, self.start, self.tokens = job, time.monotonic(), 0
        self.have = [job.k - len(job.missing(i)) for i in range(len(job.problems))]
        self.bar = tqdm(total=len(job.problems) * job.k, initial=len(job.saved), desc=job.bench.name,
                        unit="sample", file=sys.stderr, dynamic_ncols=True)
        self._postfix()

    def _postfix(self) -> None:
        done = sum(h == self.job.k for h in self.have)
        rate = self.tokens / max(time.monotonic() - self.start, 1e-9)
        self.bar.set_postfix_str(f"problems {done}/{len(self.have)}, {rate:.0f} tok/s")

    def update(self, i: int, records: list[dict]) -> None:
        self.have[i] += len(records)
        self.tokens += sum(r["completion_tokens"] for r in records)
        self.bar.update(len(records))
        self._postfix()

    def close(self) -> None:
        self.bar.close()


async def _generate(job: Job, e: EvalConfig, tokenizer, client, reward) -> int:
    """Draw and save every missing sample of ``job``; returns how many were generated."""
    from igrpo_megatron.rollout import SamplingParams

    progress = _Progress(job)

    async def one(i: int, first: int, n: int) -> int:
        p, ids = job.problems[i], job.prompts[i]
        seed = e.seed + i * EVAL_SEED_STRIDE + first
        params = SamplingParams(temperature=e.temperature, top_p=e.top_p, max_tokens=e.max_tokens, seed=seed)
        samples = await client.generate(ids, n=n, params=params)
        texts = [tokenizer.decode(s.token_ids, skip_special_tokens=True) for s in samples]
        records = await score_completions(reward, p, texts, first)
        for m, (rec, s) in enumerate(zip(records, samples)):
            rec.update(seed=seed + m, finish_reason=s.finish_reason, prompt_tokens=len(ids),
                       completion_tokens=len(s.token_ids), server=s.server)
        job.store.append(records)
        job.saved.update(((r["id"], r["sample"]), r) for r in records)
        progress.update(i, records)
        return n

    requests = [one(i, first, n) for i in range(len(job.problems))
                for first, n in request_chunks(job.missing(i), e.samples_per_request)]
    try:
        return sum(await asyncio.gather(*requests))
    finally:
        progress.close()
        await client.aclose()


def evaluate(cfg: Config, jobs: Sequence[Job], tokenizer, server_urls: Sequence[str], api_key: str,
             model_name: str) -> dict:
    """Generate what ``jobs`` miss on the servers, score every benchmark, write the results.

    Writes ``<output_dir>/<benchmark>.jsonl`` (every sample, in problem and sample order once
    complete), ``results.json`` (the summaries and the average of avg@k over benchmarks, the
    paper's "Avg" column) and ``results.md`` (eval/report.py).
    """
    from igrpo_megatron.rewards import make_reward
    from igrpo_megatron.rollout import RolloutClient

    e = cfg.eval
    results: dict = {"model": model_name, "benchmarks": {}, "protocol": asdict(e),
                     "paper_row": paper_row(model_name, e.paper_row)}
    client = None
    if any(job.missing_samples for job in jobs):
        rollout = dataclasses.replace(cfg.rollout, request_timeout_s=e.request_timeout_s)
        client = RolloutClient.from_config(rollout, server_urls, api_key)
    reward_cfg = RewardConfig(kind="math_verify", num_workers=cfg.reward.num_workers, timeout_s=cfg.reward.timeout_s)
    with make_reward(reward_cfg) as reward:
        for job in jobs:
            reused = len(job.saved)
            log.info("%s: reusing %d of %d samples saved in %s, generating %d", job.bench.name, reused,
                     len(job.problems) * job.k, job.store.path, job.missing_samples)
            generated = asyncio.run(_generate(job, e, tokenizer, client, reward)) if job.missing_samples else 0
            records = [job.saved[(p.id, j)] for p in job.problems for j in range(job.k)]
            job.store.rewrite(records)
            summary = summarize_records(records, job.k, e.pass_k)
            summary.update(reused=reused, generated=generated)
            results["benchmarks"][job.bench.name] = summary
            log.info("%s: avg@%d = %.4f over %d problems", job.bench.name, job.k, summary[f"avg@{job.k}"],
                     len(job.problems))
    avgs = [s[f"avg@{s['samples']}"] for s in results["benchmarks"].values()]
    results["average"] = sum(avgs) / len(avgs)
    with open(os.path.join(e.output_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(e.output_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(results_markdown(results))
    return results
