"""RewardPool: real forked workers, real math-verify; timeouts, stuck and dying workers."""
import asyncio
import os
import signal
import time

import pytest

from igrpo_megatron.config import ConfigError, RewardConfig
from igrpo_megatron.rewards import RewardItem, make_reward

PATHOLOGICAL = ("\\boxed{2^{2^{2^{2^{2^{2}}}}}}", "3^{3^{3^{3}}}")
GOOD = [
    ("<think>7+12</think><answer>\\boxed{19}</answer>", "19"),  # right, formatted
    ("<think>half</think><answer>0.5</answer>", "\\frac{1}{2}"),  # right, formatted
    ("so \\boxed{\\{3,2,1\\}}", "\\{1,2,3\\}"),  # right, unformatted
    ("<think>x</think><answer>\\boxed{20}</answer>", "19"),  # wrong, formatted
    ("no answer", "19"),  # nothing extracted
]
GOOD_ACC = [1.0, 1.0, 1.0, 0.0, 0.0]
GOOD_FMT = [1.0, 1.0, 0.0, 1.0, 0.0]
HANG_GUARD_S = 120  # only so that a broken pool fails the test instead of hanging CI


def _results(futures):
    return [f.result(timeout=HANG_GUARD_S) for f in futures]


def test_scores_components_and_weights_in_order():
    cfg = RewardConfig(num_workers=2, accuracy_weight=1.0, format_weight=0.5, chunk_size=2)
    with make_reward(cfg) as pool:
        items = GOOD * 4  # 20 items over two workers, chunks of 2: exercises reassembly
        results = _results(pool.submit(items))
        assert [r.accuracy for r in results] == GOOD_ACC * 4
        assert [r.format for r in results] == GOOD_FMT * 4
        assert [r.total for r in results] == [a + 0.5 * f for a, f in zip(GOOD_ACC, GOOD_FMT)] * 4
        assert not any(r.timed_out or r.error for r in results)
        assert pool.counters() == {"items": 20, "timeouts": 0, "worker_deaths": 0, "errors": 0}


def test_pathological_item_times_out_scores_zero_and_is_counted():
    with make_reward(RewardConfig(num_workers=2, timeout_s=1.0)) as pool:
        results = _results(pool.submit([PATHOLOGICAL] + GOOD))
        assert results[0].accuracy == 0.0 and results[0].total == 0.0 and results[0].timed_out
        assert [r.accuracy for r in results[1:]] == GOOD_ACC
        assert pool.counters()["timeouts"] == 1
        # The worker whose timer fired is still the same process and still scores.
        pids = pool.worker_pids()
        assert [r.accuracy for r in pool.score(GOOD)] == GOOD_ACC
        assert pool.worker_pids() == pids


def test_stuck_worker_is_killed_at_the_hard_deadline_and_replaced():
    # The worker's own CPU timer (60 s) is longer than the parent's wall-clock deadline (3 s), as
    # for a worker stuck inside C code that cannot run the timer's handler: the parent kills it.
    with make_reward(RewardConfig(num_workers=1, timeout_s=60.0, kill_after_s=3.0)) as pool:
        (stuck_pid,) = pool.worker_pids()
        stuck = (PATHOLOGICAL[0].replace("\\boxed", "<think>t</think><answer>\\boxed") + "</answer>",
                 PATHOLOGICAL[1])
        results = _results(pool.submit([stuck] + GOOD))
        assert results[0].timed_out and results[0].accuracy == 0.0
        assert results[0].format == 1.0  # the format reward of a timed-out item still counts
        assert results[0].error == "killed after the hard deadline"
        assert [r.accuracy for r in results[1:]] == GOOD_ACC  # requeued onto the new worker
        assert pool.worker_pids() != [stuck_pid]
        assert pool.counters() == {"items": 6, "timeouts": 1, "worker_deaths": 0, "errors": 0}


def test_dead_worker_is_replaced_and_only_its_current_item_is_charged():
    with make_reward(RewardConfig(num_workers=1, timeout_s=60.0)) as pool:
        (pid,) = pool.worker_pids()
        futures = pool.submit([PATHOLOGICAL] + GOOD)
        time.sleep(2.0)  # the worker is inside the pathological item (60 CPU-second timer)
        os.kill(pid, signal.SIGKILL)
        results = _results(futures)
        assert results[0].accuracy == 0.0 and not results[0].timed_out
        assert results[0].error == "worker died (exit code -9)"
        assert [r.accuracy for r in results[1:]] == GOOD_ACC
        assert pool.counters() == {"items": 6, "timeouts": 0, "worker_deaths": 1, "errors": 0}
        # A worker that dies while idle is replaced (seen by its pipe's EOF) without charging anything.
        (pid,) = pool.worker_pids()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + HANG_GUARD_S
        while pool.worker_pids() == [pid] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.worker_pids() != [pid]
        assert [r.accuracy for r in pool.score(GOOD)] == GOOD_ACC
        assert pool.counters()["worker_deaths"] == 1


def test_think_prefilled_reaches_the_workers():
    with make_reward(RewardConfig(num_workers=1, think_prefilled=True)) as pool:
        (r,) = pool.score([("7+12</think><answer>\\boxed{19}</answer>", "19")])
    assert (r.accuracy, r.format, r.total) == (1.0, 1.0, 2.0)


def test_score_async_scores_concurrent_groups():
    async def main(pool):
        drafts = [RewardItem(c, g, question="q") for c, g in GOOD]
        return await asyncio.gather(pool.score_async(drafts), pool.score_async(drafts[::-1]))

    with make_reward(RewardConfig(num_workers=2)) as pool:
        first, second = asyncio.run(main(pool))
    assert [r.accuracy for r in first] == GOOD_ACC
    assert [r.accuracy for r in second] == GOOD_ACC[::-1]


def test_closed_pool_refuses_work_and_unknown_kind_is_a_config_error():
    pool = make_reward(RewardConfig(num_workers=1))
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(GOOD)
    with pytest.raises(ConfigError, match="reward.kind"):
        make_reward(RewardConfig(kind="nope"))
