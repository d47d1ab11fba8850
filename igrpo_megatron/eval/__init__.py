"""Evaluation: the paper's benchmarks (``benchmarks``, multiple-choice letters in ``choice``),
avg@k / pass@k / maj@k (``scores``), the saved samples (``samples``), the run against rollout
servers (``runner``) and results.md beside the paper (``report``); ``igrpo-eval`` is cli/eval.py."""
from igrpo_megatron.eval.benchmarks import BENCHMARKS, Benchmark, Problem, load_benchmark
from igrpo_megatron.eval.choice import extract_choice
from igrpo_megatron.eval.scores import majority_vote, pass_at_k, summarize

__all__ = ["BENCHMARKS", "Benchmark", "Problem", "extract_choice", "load_benchmark", "majority_vote",
           "pass_at_k", "summarize"]
