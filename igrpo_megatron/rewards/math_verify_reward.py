"""Rule-based reward: math-verify accuracy plus the format reward, scored in worker processes.

Why processes: math-verify is pure-Python sympy work (a few ms per pair for numbers, tens of ms
for sets and intervals), so threads are GIL-bound, and its timeouts use SIGALRM, which only a
process's main thread can receive.
Why a pool of our own: ``concurrent.futures`` marks the whole pool broken when one worker dies,
and ``multiprocessing.Pool`` loses a killed worker's task forever. A reward pool inside a long run
must turn a stuck or dying worker into one zero-scored, counted item and carry on.

Time bound per item, two layers:
1. In the worker, one interval timer of ``timeout_s`` seconds of CPU time (ITIMER_PROF, SIGPROF)
   covers parse(gold), parse(pred) and verify together. CPU time, not wall time, so that a
   machine crowded with other processes does not turn ordinary items into timeouts.
   math-verify's own SIGALRM timeouts are turned off: they restart for every call and swallow
   the timeout into a plain ``False``, so a timeout could not be counted.
2. In the parent, a wall-clock deadline (``kill_after_s``, default max(3 * timeout_s,
   timeout_s + 10)): a worker stuck in C code (a huge integer power) never returns to the
   interpreter to run the signal handler, so it is killed with SIGKILL and replaced.
In both cases the item scores accuracy 0 (its format reward still counts) and ``timeouts`` grows.
A worker that dies charges only the item it was scoring ("worker_deaths"); the rest of its chunk
goes back to the queue.

Workers are forked after math-verify is imported and warmed up here (its first parse builds the
ANTLR parser and imports sympy parts, ~1 s), so a new worker starts in milliseconds, imports
nothing, and its first item is not charged the warm-up against its timeout. Forking while other
threads run is then safe: the child only touches modules that are already loaded.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import logging
import math
import multiprocessing as mp
import os
import signal
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Optional, Sequence

from math_verify import LatexExtractionConfig, parse, verify

from igrpo_megatron.lifetime import die_with_parent
from igrpo_megatron.config import RewardConfig
from igrpo_megatron.rewards.base import RewardItem, RewardResult, as_items, make_result
from igrpo_megatron.rewards.extract import extract_answer, format_reward

# Its only warnings are "timeout is disabled" (we bound time ourselves) and per-item timeouts
# (we count them); both would flood the trainer's log.
logging.getLogger("math_verify").setLevel(logging.ERROR)

# ------------------------------------------------------------------------------- scoring


_LATEX_ONLY = [LatexExtractionConfig()]


def _parse_boxed(answer: str):
    # Wrapping in \boxed{} makes math-verify read the whole string as one LaTeX answer: sets,
    # intervals and expressions like "x^2+2x+1" parse only with an anchor (bare they give []).
    # Inside a box the LaTeX extractor alone suffices; skipping the plain-expression extractor
    # saves 10-40 % of the time.
    return parse(f"\\boxed{{{answer}}}", extraction_config=_LATEX_ONLY, parsing_timeout=None)


@functools.lru_cache(maxsize=4096)
def _parse_gold(gold: str):
    return _parse_boxed(gold)  # a group's completions share one gold answer: parse it once


def accuracy(completion: str, gold: str) -> float:
    """1.0 when the extracted answer is mathematically equal to ``gold``, else 0.0. No time bound."""
    pred = extract_answer(completion)
    if pred is None:
        return 0.0
    return 1.0 if verify(_parse_gold(gold), _parse_boxed(pred), timeout_seconds=None) else 0.0


_WARM_UP = [("\\boxed{\\{3,2,1\\}}", "\\{1,2,3\\}"), ("\\boxed{0.5}", "\\frac{1}{2}"),
             ("\\boxed{(0,1]}", "x^2+1")]


class _ItemTimeout(BaseException):
    """Raised by the worker's SIGPROF handler; a BaseException so math-verify's and sympy's
    ``except Exception`` clauses cannot swallow it."""


def _raise_timeout(signum, frame):
    raise _ItemTimeout()


def _score_in_worker(completion: str, gold: str, cfg: RewardConfig) -> tuple[float, float, str]:
    """(accuracy, format, status) with status "" (ok), "timeout" or "error: ..."."""
    # A linear-time regex, outside the timer: the format is known even when accuracy times out.
    fmt = format_reward(completion, cfg.think_prefilled)
    try:
        signal.setitimer(signal.ITIMER_PROF, cfg.timeout_s)
        try:
            return accuracy(completion, gold), fmt, ""
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
    except _ItemTimeout:
        return 0.0, fmt, "timeout"
    except Exception as e:  # noqa: BLE001 - any failure of one item scores 0 and is counted
        return 0.0, fmt, f"error: {type(e).__name__}: {e}"[:300]


def _worker_main(conn, cfg: RewardConfig) -> None:
    die_with_parent()  # a SIGKILLed trainer leaves no scoring worker behind
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle; it closes us
    signal.signal(signal.SIGPROF, _raise_timeout)
    conn.send(None)  # ready: from here on the worker is always either scoring or reading
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError):
            return
        if chunk is None:
            return
        for task_id, completion, gold in chunk:
            conn.send((task_id, *_score_in_worker(completion, gold, cfg)))


# ---------------------------------------------------------------------------------- pool


@dataclass
class _Task:
    id: int
    item: RewardItem
    future: Future


@dataclass
class _Worker:
    proc: mp.process.BaseProcess
    conn: "mp.connection.Connection"
    chunk: collections.deque = field(default_factory=collections.deque)  # in flight, head = current
    # Spawn time until ready, then the start of the current item; the hard deadline runs from it.
    item_started: float = field(default_factory=time.monotonic)
    # Chunks go only to a worker that said it is ready, so the dispatcher's send can never block
    # on a child that hung between fork and its first read (a blocked send would stall the pool).
    ready: bool = False

    @property
    def on_the_clock(self) -> bool:
        return bool(self.chunk) or not self.ready


class RewardPool:
    """math-verify + format reward in ``cfg.num_workers`` forked processes (0: one per core).

    ``submit`` returns one future per item at once; ``score`` blocks; ``score_async`` awaits.
    Counters: items, timeouts (worker CPU timer or parent kill), worker_deaths, errors.
    """

    def __init__(self, cfg: RewardConfig):
        self.cfg = cfg
        self.num_workers = cfg.num_workers or os.cpu_count() or 1
        self.hard_deadline_s = cfg.kill_after_s or max(3 * cfg.timeout_s, cfg.timeout_s + 10.0)
        self._ctx = mp.get_context("fork")
        for completion, gold in _WARM_UP:
            accuracy(completion, gold)
        self._lock = threading.Lock()
        self._pending: collections.deque[_Task] = collections.deque()
        self._next_id = 0
        self._closed = False
        self._counts = {"items": 0, "timeouts": 0, "worker_deaths": 0, "errors": 0}
        self._wake_r, self._wake_w = self._ctx.Pipe(duplex=False)
        self._workers = [self._spawn() for _ in range(self.num_workers)]
        self._thread = threading.Thread(target=self._run, name="reward-pool", daemon=True)
        self._thread.start()

    # ---- public API

    def submit(self, items: Sequence) -> list[Future]:
        """One ``concurrent.futures.Future[RewardResult]`` per item, in order."""
        futures = []
        with self._lock:
            if self._closed:
                raise RuntimeError("RewardPool is closed")
            for item in as_items(items):
                fut: Future = Future()
                self._pending.append(_Task(self._next_id, item, fut))
                self._next_id += 1
                futures.append(fut)
        self._wake_w.send_bytes(b"")
        return futures

    def score(self, items: Sequence) -> list[RewardResult]:
        return [f.result() for f in self.submit(items)]

    async def score_async(self, items: Sequence) -> list[RewardResult]:
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in self.submit(items))))

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def worker_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake_w.send_bytes(b"")
        self._thread.join()
        for w in self._workers:
            try:
                w.conn.send(None)
            except OSError:
                pass
        for w in self._workers:
            w.proc.join(timeout=1.0)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join()
            w.conn.close()
        leftover = list(self._pending) + [t for w in self._workers for t in w.chunk]
        for task in leftover:
            if not task.future.done():
                task.future.set_exception(RuntimeError("RewardPool closed before the item was scored"))

    def __enter__(self) -> "RewardPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- dispatcher thread

    def _spawn(self) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker_main, args=(child_conn, self.cfg),
                                 name="reward-worker", daemon=True)
        proc.start()
        child_conn.close()  # so the parent sees EOF when the worker dies
        return _Worker(proc, parent_conn)

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._closed:
                        return
                self._dispatch_once()
        except BaseException as e:  # a bug or a failed fork: fail every item rather than hang them
            with self._lock:
                self._closed = True
                tasks = list(self._pending) + [t for w in self._workers for t in w.chunk]
                self._pending.clear()
            for task in tasks:
                if not task.future.done():
                    task.future.set_exception(RuntimeError(f"RewardPool dispatcher failed: {e!r}"))
            raise

    def _dispatch_once(self) -> None:
        self._assign()
        now = time.monotonic()
        clocks = [w.item_started + self.hard_deadline_s - now for w in self._workers if w.on_the_clock]
        ready = wait([self._wake_r] + [w.conn for w in self._workers],
                     timeout=max(0.0, min(clocks)) if clocks else None)
        for conn in ready:
            if conn is self._wake_r:
                while self._wake_r.poll():
                    self._wake_r.recv_bytes()
                continue
            self._receive(next(w for w in self._workers if w.conn is conn))
        now = time.monotonic()
        for w in list(self._workers):
            if w.on_the_clock and now - w.item_started > self.hard_deadline_s:
                self._receive(w)  # a result may have arrived just now
                if w in self._workers and w.on_the_clock and now - w.item_started > self.hard_deadline_s:
                    self._replace(w, timed_out=True)

    def _assign(self) -> None:
        for w in self._workers:
            if w.on_the_clock:
                continue
            with self._lock:
                size = max(1, min(self.cfg.chunk_size, math.ceil(len(self._pending) / self.num_workers)))
                while self._pending and len(w.chunk) < size:
                    task = self._pending.popleft()
                    # A requeued task is already running; a fresh one may have been cancelled.
                    if task.future.running() or task.future.set_running_or_notify_cancel():
                        w.chunk.append(task)
            if not w.chunk:
                return  # the queue is empty
            try:
                w.conn.send([(t.id, t.item.completion, t.item.gold) for t in w.chunk])
                w.item_started = time.monotonic()
            except OSError:  # died while idle: nothing of this chunk was started
                self._replace(w, timed_out=False, charge_head=False)

    def _receive(self, w: _Worker) -> None:
        try:
            while w.conn.poll():
                msg = w.conn.recv()
                if msg is None:
                    w.ready, w.item_started = True, time.monotonic()
                    continue
                task_id, acc, fmt, status = msg
                task = w.chunk.popleft()
                assert task.id == task_id, (task.id, task_id)
                w.item_started = time.monotonic()
                if status == "timeout":
                    self._finish(task, acc, fmt, "timeouts")
                else:
                    self._finish(task, acc, fmt, "errors" if status else None, error=status or None)
        except (EOFError, OSError):
            self._replace(w, timed_out=False)

    def _finish(self, task: _Task, acc: float, fmt: float, counter: Optional[str],
                error: Optional[str] = None) -> None:
        """Resolve ``task``; ``counter`` names the failure it counts as (None: scored normally)."""
        with self._lock:
            self._counts["items"] += 1
            if counter is not None:
                self._counts[counter] += 1
        task.future.set_result(make_result(acc, fmt, self.cfg.accuracy_weight, self.cfg.format_weight,
                                           timed_out=counter == "timeouts", error=error))

    def _replace(self, w: _Worker, timed_out: bool, charge_head: bool = True) -> None:
        """Kill ``w``, charge the item it was scoring, requeue the rest of its chunk, start a new one."""
        if w.proc.is_alive():
            w.proc.kill()
        w.proc.join()
        w.conn.close()
        if charge_head and w.chunk:
            head = w.chunk.popleft()
            fmt = format_reward(head.item.completion, self.cfg.think_prefilled)
            if timed_out:
                self._finish(head, 0.0, fmt, "timeouts", error="killed after the hard deadline")
            else:
                self._finish(head, 0.0, fmt, "worker_deaths",
                             error=f"worker died (exit code {w.proc.exitcode})")
        with self._lock:
            self._pending.extendleft(reversed(w.chunk))
        self._workers[self._workers.index(w)] = self._spawn()
