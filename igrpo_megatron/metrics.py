"""What one iteration measured, and where it is written (JSONL, TensorBoard, one console line).

The rollout figures answer the paper's questions directly: does the best of N drafts reach
``1 - (1 - p)^N`` (its Proposition), and do refinements fix wrong drafts more often than they
break right ones. Everything is computed on rank 0 from the full rollout batch; the training
figures (entropy, KL, clip fraction) come from the loss, summed over micro-batches and
data-parallel ranks by ``Policy.train_step`` and averaged here over the step's optimizer steps.
:func:`step_record` assembles rank 0's record of one step from its parts.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Sequence

if TYPE_CHECKING:
    from igrpo_megatron.rollout.refit import RefitStats
    from igrpo_megatron.rollout.two_stage import PromptRollout

# Every step's record carries these keys (the end-to-end test checks the file against this list).
STEP_FIELDS = (
    "step",
    "prompts_consumed",
    "weight_version",  # of the policy after this step's update (what the server now serves)
    "rollout_weight_version",  # the oldest version that generated this step's samples
    "server_weight_version",  # what the rollout server reports after the refit
    "draft_acc",
    "best_draft_acc",
    "best_draft_acc_bound",
    "draft_all_zero_frac",  # prompts whose N drafts all scored 0: stage 2 starts from a failed draft
    "refine_acc",
    "trans_wrong_to_right",
    "trans_right_to_wrong",
    "reward_mean",
    "reward_std",
    "zero_var_frac",  # over every group sampled, refills included
    "groups_kept",  # groups trained on (DAPO dynamic sampling: those with reward variance)
    "groups_dropped",  # zero-variance groups dynamic sampling dropped
    "groups_surplus",  # kept groups beyond train.prompts_per_step the last refill over-sampled
    "refill_rounds",  # extra rollout rounds dynamic sampling took to refill the batch
    "refill_exhausted",  # 1.0 when loss.dynamic_sampling_max_refills ran out before the batch was full
    "refill_exhausted_steps",  # steps of this run so far that did
    "format_mean",  # mean format reward of the refinements (0 for K steps: a warning)
    "no_signal",  # 1.0 when every group's rewards are equal: no advantage, no gradient this step
    "format_zero_steps",  # consecutive steps so far whose every refinement scored format 0
    "entropy",
    "weight_norm",  # L2 norm of the policy's parameters after the update (Megatron-LM's params-norm)
    "kl",  # k3 KL(old || new) of this step's update (0 for a single on-policy step)
    "clip_frac",
    "logprob_mismatch",
    "prompt_len_mean",
    "draft_len_mean",
    "response_len_mean",
    "truncated_frac",
    "time_rollout_s",
    "time_logprobs_s",
    "time_train_s",
    "time_refit_s",
    "time_step_s",
    "tokens_per_s",
    "refit_pause_s",  # POST /pause of the refit: with pause_mode=wait, the requests in flight finishing
    "refit_load_s",  # export + transfer + load on the servers, overlapped bucket by bucket
    "refit_mb",  # weight bytes sent to each server (1e6 bytes)
    "refit_tensors",  # HF tensors sent (the server checks it loaded as many)
)

# With ``reward.kind: judge`` every record also carries these (metrics.JudgeWatch derives them).
JUDGE_FIELDS = (
    "judge_grades_per_s",  # this step's grades / the wall time the judge had a request in flight
    "judge_unparseable_frac",  # this step's judge replies with no score in [0, 1] (fallback score used)
)


def _mean(xs: Sequence[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0


def _std(xs: Sequence[float]) -> float:
    if len(xs) < 2:
        return 0.0
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def rollout_metrics(groups: Sequence["PromptRollout"], num_drafts: int) -> dict[str, float]:
    """Accuracy of drafts, best drafts and refinements, transitions, rewards and lengths.

    Transitions are conditional rates over refinement samples: ``trans_wrong_to_right`` is
    P(refinement correct | its best draft wrong), ``trans_right_to_wrong`` is P(refinement wrong |
    best draft right). Both are 0 for GRPO.
    """
    rewards = [r for g in groups for r in g.rewards]
    acc = [a for g in groups for a in g.accuracy]
    draft_acc = [a for g in groups for a in g.draft_accuracy]
    best_acc = [g.draft_accuracy[g.best_draft] for g in groups if g.draft_accuracy]
    p = _mean(draft_acc)
    from_wrong = [a for g in groups if g.draft_accuracy and g.draft_accuracy[g.best_draft] < 1 for a in g.accuracy]
    from_right = [a for g in groups if g.draft_accuracy and g.draft_accuracy[g.best_draft] >= 1 for a in g.accuracy]
    return {
        "draft_acc": p,
        "best_draft_acc": _mean(best_acc),
        "best_draft_acc_bound": 1.0 - (1.0 - p) ** num_drafts if num_drafts else 0.0,
        "draft_all_zero_frac": _mean([float(max(g.draft_rewards) <= 0) for g in groups if g.draft_rewards]),
        "refine_acc": _mean(acc),
        "trans_wrong_to_right": _mean(from_wrong),
        "trans_right_to_wrong": 1.0 - _mean(from_right) if from_right else 0.0,
        "reward_mean": _mean(rewards),
        "reward_std": _std(rewards),
        "zero_var_frac": _mean([float(max(g.rewards) == min(g.rewards)) for g in groups]),
        "prompt_len_mean": _mean([len(g.prompt_ids) for g in groups]),
        "draft_len_mean": _mean([len(d) for g in groups for d in g.draft_ids]),
        "response_len_mean": _mean([len(r) for g in groups for r in g.response_ids]),
        "truncated_frac": _mean([float(t) for g in groups for t in g.truncated]),
        "format_mean": _mean([f for g in groups for f in g.format_scores]),
        "num_samples": float(len(rewards)),
    }


def generated_tokens(groups: Sequence["PromptRollout"]) -> int:
    """Tokens the rollout server generated this step (drafts included: they cost decode time)."""
    return sum(len(r) for g in groups for r in g.response_ids) + sum(len(d) for g in groups for d in g.draft_ids)


def mean_over_updates(updates: Sequence[dict]) -> dict[str, float]:
    """The step's loss figures from its ``ppo_epochs x mini_batches`` optimizer steps: the mean of
    each figure over them (the max for ``*_max``, the rule inside one step too); {} for none."""
    if not updates:
        return {}
    return {k: max(float(u[k]) for u in updates) if k.endswith("_max") else
            sum(float(u[k]) for u in updates) / len(updates) for k in updates[0]}


def train_record(m: dict) -> dict:
    """The loss metrics under the names of :data:`STEP_FIELDS`.

    The trainer always passes entropy and rollout logprobs to the loss, so every source key exists.
    A step without an update (dynamic sampling dropped every group) records NaN, not a made-up 0.
    """
    if not m:
        return dict.fromkeys(("entropy", "kl", "logprob_mismatch", "clip_frac"), float("nan"))
    rec = {k: float(v) for k, v in m.items()}
    rec.update(entropy=rec["entropy"], kl=rec["approx_kl"], logprob_mismatch=rec["mismatch_abs_diff"],
               clip_frac=rec["clip_frac_low"] + rec["clip_frac_high"])
    return rec


def refit_record(stats: "RefitStats") -> dict[str, float]:
    """The refit's own figures (the Refitter measures them on rank 0) under their STEP_FIELDS names."""
    return {"refit_pause_s": stats.pause_s, "refit_load_s": stats.load_s, "refit_mb": stats.num_bytes / 1e6,
            "refit_tensors": float(stats.num_tensors)}


class Stopwatch:
    """Wall time of a step's phases: ``with watch("rollout"): ...`` adds to ``watch.times["rollout"]``.

    Every phase named at construction is in ``times`` (0 when it did not run: a step whose groups
    dynamic sampling all dropped has no update), so every record has the same keys.
    """

    def __init__(self, phases: Sequence[str]):
        self.times = dict.fromkeys(phases, 0.0)
        self._start = time.perf_counter()

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[phase] = self.times.get(phase, 0.0) + time.perf_counter() - t0

    def elapsed(self) -> float:
        return time.perf_counter() - self._start


def step_record(groups: Sequence["PromptRollout"], num_drafts: int, batch_info: dict, train: dict,
                watch: Stopwatch, refit: "RefitStats", rollout_counters: dict) -> dict:
    """Rank 0's figures of one step: rollouts, batch, loss, refit, timings and the rollout side's counters."""
    rec = rollout_metrics(groups, num_drafts)
    rec.update(batch_info)
    rec.update(train_record(train))
    rec.update(refit_record(refit))
    rec.update({f"time_{phase}_s": t for phase, t in watch.times.items()})
    rec.update(time_step_s=watch.elapsed(),
               tokens_per_s=generated_tokens(groups) / max(watch.times.get("rollout", 0.0), 1e-9),
               rollout_weight_version=min(g.weight_version for g in groups))
    rec.update(rollout_counters)  # cumulative: items scored, timeouts, worker deaths, judge errors, retries
    return rec


class MetricsLogger:
    """Append one JSON record per step to ``run_dir/metrics.jsonl``; mirror to TensorBoard if installed.

    Appending (not truncating) keeps the history of a resumed run in one file. A run that starts
    at ``start_step`` (the step of the checkpoint it resumed from) will log the steps after it
    again, so the records of those steps, written by the run that crashed, move to
    ``metrics.jsonl.superseded`` first: the file holds one record per step, and nothing is lost.
    """

    def __init__(self, run_dir: str, tensorboard: bool = True, stream=None, start_step: int = 0):
        os.makedirs(run_dir, exist_ok=True)
        self.path = os.path.join(run_dir, "metrics.jsonl")
        supersede_records_after(self.path, start_step)
        self._file = open(self.path, "a", encoding="utf-8")
        self._stream = stream or sys.stdout
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional; JSONL is the record of truth
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))
        self._t0 = time.time()
        self.signal = SignalWatch()
        self.judge = JudgeWatch()

    def log(self, record: dict) -> None:
        self.judge.add_rates(record)
        for warning in self.signal.check(record):
            print(f"WARNING: {warning}", file=self._stream, flush=True)
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, record["step"])
            self._tb.flush()
        print(progress_line(record), file=self._stream, flush=True)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def supersede_records_after(path: str, step: int) -> int:
    """Move the records of steps after ``step`` from ``path`` to ``path.superseded`` (appended, each
    marked with when it was superseded); returns how many moved."""
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    keep = [line for line in lines if int(json.loads(line)["step"]) <= step]
    moved = [line for line in lines if int(json.loads(line)["step"]) > step]
    if moved:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        with open(path + ".superseded", "a", encoding="utf-8") as f:
            f.writelines(json.dumps({**json.loads(line), "superseded_at": stamp, "superseded_by_resume_at": step},
                                    sort_keys=True) + "\n" for line in moved)
            f.flush()
            os.fsync(f.fileno())
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(keep)
        os.replace(tmp, path)
    return len(moved)


def progress_line(r: dict) -> str:
    """One human-readable line per step: the numbers someone watching a run looks for first."""
    parts = [f"step {r['step']:>4}"]
    two_stage = r.get("draft_len_mean", 0) > 0
    if two_stage:
        parts.append(f"draft {r['draft_acc']:.3f} best {r['best_draft_acc']:.3f} (1-(1-p)^N {r['best_draft_acc_bound']:.3f})")
    parts.append(f"acc {r.get('refine_acc', 0):.3f}")
    if two_stage:
        parts.append(f"w->r {r.get('trans_wrong_to_right', 0):.2f} r->w {r.get('trans_right_to_wrong', 0):.2f}")
    parts.append(f"reward {r.get('reward_mean', 0):.3f}±{r.get('reward_std', 0):.3f}")
    parts.append(f"ent {r.get('entropy', 0):.3f} kl {r.get('kl', 0):.2e} clip {r.get('clip_frac', 0):.3f}")
    parts.append(f"len {r.get('response_len_mean', 0):.0f}")
    parts.append(f"{r.get('time_step_s', 0):.1f}s ({r.get('tokens_per_s', 0):.0f} tok/s) v{r.get('weight_version', -1)}")
    if "judge_grades_per_s" in r:
        parts.append(f"judge {r['judge_grades_per_s']:.1f} grades/s unparseable {r['judge_unparseable_frac']:.2f}")
    if r.get("groups_dropped") or r.get("refill_rounds"):
        parts.append(f"groups {r['groups_kept']:.0f} kept {r['groups_dropped']:.0f} dropped "
                     f"{r['refill_rounds']:.0f} refills")
    if r.get("no_signal"):
        parts.append("NO SIGNAL (all groups zero-variance)")
    return " | ".join(parts)


#: What usually makes a real model's rewards all equal; each is a setting or a file to look at.
NO_SIGNAL_CAUSES = ("the prompt format (data.system_prompt, data.user_suffix: does the model write the "
                    "answer the reward extracts?), reward.think_prefilled, truncation at rollout.max_tokens "
                    "(truncated_frac), answer extraction (read rollouts.jsonl: igrpo-plot RUN_DIR --samples)")


class SignalWatch:
    """Says plainly when steps cannot teach the policy anything.

    A step whose groups are all zero-variance has all-zero advantages: the update does nothing but
    the entropy bonus, and nothing in the loss figures shows it. A real model that never writes the
    expected answer format scores 0 everywhere this way (measured: SmolLM2-135M-Instruct with the
    paper's prompt). Each condition is warned about once, with its likely causes; the record
    carries ``no_signal`` and ``format_zero_steps`` every step, and the console line flags it.
    """

    def __init__(self, format_patience: int = 3):
        self.format_patience = format_patience
        self.format_zero_steps = 0
        self.refill_exhausted_steps = 0
        self.warned: set[str] = set()

    def check(self, record: dict) -> list[str]:
        """Adds the signal fields to ``record``; returns the warnings first seen at this step.
        (A record without rollout figures, e.g. from a unit test, is left as it is.)"""
        if "zero_var_frac" not in record:
            return []
        record["no_signal"] = float(record["zero_var_frac"] >= 1.0)
        self.format_zero_steps = self.format_zero_steps + 1 if record["format_mean"] == 0 else 0
        record["format_zero_steps"] = self.format_zero_steps
        self.refill_exhausted_steps += int(record.get("refill_exhausted", 0))
        record["refill_exhausted_steps"] = self.refill_exhausted_steps
        found = {}
        if record.get("refill_exhausted"):
            found["refill"] = (f"step {record['step']}: dynamic sampling kept {record['groups_kept']:.0f} groups "
                               f"after {record['refill_rounds']:.0f} refill rounds, short of train.prompts_per_step; "
                               f"the step trained on those (raise loss.dynamic_sampling_max_refills, or the "
                               f"data is too easy or too hard for the policy)")
        if record["no_signal"]:
            found["no_signal"] = (f"step {record['step']}: every group's rewards are equal (reward mean "
                                  f"{record['reward_mean']:.3f}): all advantages are 0, so this step has no "
                                  f"learning signal; likely causes: {NO_SIGNAL_CAUSES}")
        if self.format_zero_steps >= self.format_patience:
            found["format"] = (f"step {record['step']}: the format reward was 0 for every sample for "
                               f"{self.format_zero_steps} steps; likely causes: {NO_SIGNAL_CAUSES}")
        new = [text for key, text in found.items() if key not in self.warned]
        self.warned.update(found)
        return new


class JudgeWatch:
    """The judge's figures of one step, from the reward's cumulative counters in the record
    (``reward_items``, ``reward_busy_s``, ...): the difference to the previous step's.

    Counters start at 0 when the reward is built, so a resumed run's first step diffs against 0,
    which is right. A record without ``reward_busy_s`` (math-verify) is left as it is.
    """

    def __init__(self):
        self._last: dict[str, float] = {}

    def add_rates(self, record: dict) -> None:
        if "reward_busy_s" not in record:
            return
        keys = ("reward_items", "reward_busy_s", "reward_unparseable", "reward_request_failures")
        d = {k: record[k] - self._last.get(k, 0) for k in keys}
        self._last = {k: record[k] for k in keys}
        replies = d["reward_items"] - d["reward_request_failures"]
        record["judge_grades_per_s"] = d["reward_items"] / d["reward_busy_s"] if d["reward_busy_s"] > 0 else 0.0
        record["judge_unparseable_frac"] = d["reward_unparseable"] / replies if replies > 0 else 0.0


def read_metrics(run_dir: str) -> list[dict]:
    """Records of ``run_dir/metrics.jsonl`` in step order, keeping the last record per step."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist; is {run_dir} a run directory (train.output_dir)?")
    by_step: dict[int, dict] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                by_step[int(rec["step"])] = rec
    return [by_step[s] for s in sorted(by_step)]
