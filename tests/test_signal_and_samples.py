"""A run says when it cannot learn, and keeps what the model wrote: the signal watch on hand-made
records, ``rollouts.jsonl`` written, sampled, re-read after a resume and printed."""
import io

from igrpo_megatron.cli.plot import main as plot_main
from igrpo_megatron.metrics import MetricsLogger, SignalWatch
from igrpo_megatron.rollout.samples import SampleLog, read_samples
from igrpo_megatron.rollout.two_stage import PromptRollout


def _record(step, zero_var_frac, format_mean):
    return {"step": step, "zero_var_frac": zero_var_frac, "format_mean": format_mean, "reward_mean": 0.0}


def test_all_zero_variance_is_warned_once_and_flagged_every_step(tmp_path):
    stream = io.StringIO()
    logger = MetricsLogger(str(tmp_path), tensorboard=False, stream=stream)
    for step in (1, 2):
        logger.log(_record(step, 1.0, 0.5))
    logger.log(_record(3, 0.5, 0.5))  # negative control: one group with mixed rewards is a signal
    logger.close()
    lines = stream.getvalue().splitlines()
    warnings = [line for line in lines if line.startswith("WARNING")]
    assert len(warnings) == 1 and "step 1" in warnings[0] and "data.user_suffix" in warnings[0]
    assert ["NO SIGNAL" in line for line in lines if line.startswith("step")] == [True, True, False]


def test_format_zero_for_k_steps_is_warned_at_the_kth():
    watch = SignalWatch(format_patience=3)
    said = [watch.check(_record(s, 0.0, 0.0 if s != 2 else 0.25)) for s in range(1, 7)]
    # steps 1, 3, 4, 5, 6 have format 0; step 2 resets the count, so the 3rd zero in a row is step 5
    assert [bool(w) for w in said] == [False, False, False, False, True, False]
    assert "3 steps" in said[4][0]


def test_a_spent_refill_bound_is_warned_and_counted():
    watch = SignalWatch()
    refill = {"groups_kept": 3.0, "groups_dropped": 20.0, "refill_rounds": 4.0}
    records = [{**_record(s, 0.8, 1.0), **refill, "refill_exhausted": float(s != 2)} for s in (1, 2, 3)]
    said = [watch.check(r) for r in records]
    assert [len(w) for w in said] == [1, 0, 0]  # warned once, at the first step that ran out
    assert "kept 3 groups after 4 refill rounds" in said[0][0] and "dynamic_sampling_max_refills" in said[0][0]
    assert [r["refill_exhausted_steps"] for r in records] == [1, 1, 2]  # counted every time


def _group(i, step_acc):
    return PromptRollout(
        id=f"p{i}", question=f"What is {i} + 1?", answer=str(i + 1), prompt_ids=[1, 2, 3],
        response_ids=[[7, 8], [9]], response_logprobs=[[-0.1, -0.2], [-0.3]], rewards=[2.0, 0.0],
        accuracy=[1.0, 0.0], truncated=[False, True], format_scores=[1.0, 0.0], finish_reasons=["stop", "length"],
        draft_ids=[[4], [5, 6]], draft_rewards=[0.0, step_acc], draft_accuracy=[0.0, step_acc],
        draft_format=[0.0, 0.0], best_draft=1, weight_version=3)


class _Tok:
    def decode(self, ids, skip_special_tokens=True):
        return " ".join(f"t{i}" for i in ids)


def test_rollouts_jsonl_holds_every_field_and_the_last_write_of_a_step(tmp_path, capsys):
    log = SampleLog(str(tmp_path), _Tok(), token_ids=True)
    assert log.write(1, [_group(0, 0.0), _group(1, 0.0)]) == 2
    log.write(2, [_group(0, 1.0)])
    log.write(2, [_group(0, 0.0)])  # step 2 again, as after a resume: it replaces the first
    rows = read_samples(str(tmp_path))
    assert [(r["step"], r["id"]) for r in rows] == [(1, "p0"), (1, "p1"), (2, "p0")]
    r = rows[-1]
    assert r["drafts"][1]["reward"] == 0.0 and r["best_draft"] == 1 and r["weight_version"] == 3
    assert r["refinements"][1] == {"text": "t9", "reward": 0.0, "accuracy": 0.0, "format": 0.0, "length": 1,
                                   "finish_reason": "length", "token_ids": [9]}
    assert r["prompt_ids"] == [1, 2, 3] and r["answer"] == "1"
    assert plot_main([str(tmp_path), "--samples", "--step", "1"]) == 0
    out = capsys.readouterr().out
    assert "=== step 1  p1" in out and " *draft 1" in out and "refine 1  reward 0.00  1 tok length: t9" in out


def test_a_samples_fraction_keeps_a_seeded_share(tmp_path):
    groups = [_group(i, 0.0) for i in range(200)]
    kept = [SampleLog(str(tmp_path / name), _Tok(), fraction=0.25, seed=7).write(5, groups) for name in "ab"]
    assert kept[0] == kept[1] and 30 < kept[0] < 70  # the same choice each time, about a quarter
    assert SampleLog(str(tmp_path / "c"), _Tok(), fraction=0.0).write(5, groups) == 0
