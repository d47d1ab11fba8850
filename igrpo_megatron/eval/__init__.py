"""Evaluation: the paper's benchmarks (``benchmarks``), avg@k / pass@k (``scores``) and the
run against rollout servers (``runner``); ``igrpo-eval`` is cli/eval.py."""
from igrpo_megatron.eval.benchmarks import BENCHMARKS, Benchmark, Problem, load_benchmark
from igrpo_megatron.eval.scores import pass_at_k, summarize

__all__ = ["BENCHMARKS", "Benchmark", "Problem", "load_benchmark", "pass_at_k", "summarize"]
