"""Train-step efficiency on the real model, SmolLM2-135M-Instruct (issue 17 item 5), in one run.

* **FLOP/s**: one train step (the old-logprob shortcut on) achieves 6 x params x real tokens /
  step time; against it, a plain fp32 torch matmul (1024^3, same thread count) on the same core
  in the same run: the ceiling for this core.
* **Padding**: computed / real tokens on the realistic length mix of ``padding_waste.py``
  (1,024 rows log-uniform in [30, 4,096] tokens), padded to the longest row and grouped by length.
* **Old-logprob shortcut**: step time with the separate old-logprob forward and without it.
* **Async**: the trainer's step time on-policy and one step off (``rollout.async_steps: 1``),
  3 real iGRPO steps each on one vLLM server. This machine has 2 cores, so the vLLM server and
  its engine are pinned to core 0 (``VLLM_CPU_OMP_THREADS_BIND`` for its OpenMP threads) and the
  trainer to core 1 (``sched_setaffinity`` on every thread, what ``taskset`` does), standing in
  for the separate nodes of the paper's layout. Each mode's first step is left out (warm-up;
  the first async step has nothing generated ahead).

fp32 on CPU, one thread per side. A whole run took 9 minutes on the quiet 2-core machine (an
on-policy iGRPO step 40-46 s); on a machine shared with other jobs figures vary run to run and a
run took over 20 minutes.
Headline last: ``async_vs_sync_step_time: <ratio>``.

    OMP_NUM_THREADS=1 PYTHONPATH=$PWD .venv/bin/python benchmarks/step_efficiency.py
"""
import dataclasses
import os
import statistics
import sys
import tempfile
import time

import psutil
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "benchmarks")]

from padding_waste import computed_tokens, realistic_lengths  # noqa: E402

from igrpo_megatron.batch import TrainBatch  # noqa: E402
from igrpo_megatron.config import load_config  # noqa: E402
from igrpo_megatron.demo.real_model import real_model_path  # noqa: E402
from igrpo_megatron.models.parallel import free_port  # noqa: E402
from igrpo_megatron.rollout.pipeline import RolloutPipeline  # noqa: E402
from igrpo_megatron.trainer import Trainer  # noqa: E402

ROWS, WIDTH, REPEATS = 4, 256, 2  # the FLOP/s and shortcut batch: 1,024 tokens, 3/4 of them response
SERVER_CORE, TRAINER_CORE = 0, 1


def matmul_flops(n: int = 1024, reps: int = 8) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return reps * 2 * n ** 3 / (time.perf_counter() - t0)


def pin_trainer(trainer: Trainer) -> None:
    """Every thread of this process and of its children outside the server's process tree (the
    reward workers) onto TRAINER_CORE; the server tree stays on SERVER_CORE, where it started.
    Affinity is per thread, so a process's threads are pinned one by one."""
    server = psutil.Process(trainer.conn.server.process.pid)
    server_pids = {p.pid for p in [server, *server.children(recursive=True)]}
    me = psutil.Process()
    for proc in [me, *me.children(recursive=True)]:
        if proc.pid not in server_pids:
            for thread in proc.threads():
                os.sched_setaffinity(thread.id, {TRAINER_CORE})
    assert all(os.sched_getaffinity(pid) == {SERVER_CORE} for pid in server_pids), "server left its core"


def trainer_steps(trainer: Trainer, n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        trainer.step()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    # The server launched below inherits core 0 and binds its OpenMP threads there (vLLM's own
    # binding, which by default picks the cores itself); the trainer then moves to core 1.
    os.sched_setaffinity(0, {SERVER_CORE})
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = str(SERVER_CORE)
    torch.set_num_threads(1)
    run_dir = tempfile.mkdtemp(prefix="step_eff_")
    cfg = load_config(None, [
        f"model.hf_path={real_model_path()}", "model.dtype=fp32", "parallel.tp=1",
        "parallel.use_distributed_optimizer=false", "data.preset=synthetic", "reward.num_workers=1",
        "igrpo.num_drafts=2", "igrpo.num_refinements=2", "igrpo.group_budget=4",
        f"rollout.port={free_port()}", "rollout.dtype=float32", "rollout.enforce_eager=true",
        f"rollout.kv_cache_memory_bytes={1 << 28}", "rollout.max_model_len=1024", "rollout.max_prompt_tokens=512",
        "rollout.max_tokens=96", "rollout.temperature=1.0", f"train.output_dir={run_dir}",
        "train.prompts_per_step=2", "train.max_steps=100", "train.micro_batch_size=4", "train.tensorboard=false",
        "train.save_every=0"])
    with Trainer(cfg) as trainer:
        pin_trainer(trainer)
        policy = trainer.policy
        n_params = sum(p.numel() for p in policy.model_chunks[0].parameters())
        g = torch.Generator().manual_seed(0)
        mask = torch.zeros(ROWS, WIDTH)
        mask[:, WIDTH // 4:] = 1
        batch = TrainBatch(torch.randint(0, 49152, (ROWS, WIDTH), generator=g), mask, torch.randn(ROWS, generator=g))

        def timed(separate: bool) -> float:
            t0 = time.perf_counter()
            batch.old_logprobs = policy.compute_logprobs(batch) if separate else None
            policy.train_step(batch, trainer.loss_fn)
            return time.perf_counter() - t0

        timed(False)  # warm-up
        step_times = {True: [], False: []}
        peak = []
        for _ in range(REPEATS):  # interleaved, so the neighbours' load hits all three alike
            peak.append(matmul_flops())
            for separate in (True, False):
                step_times[separate].append(timed(separate))
        separate, shortcut = statistics.median(step_times[True]), statistics.median(step_times[False])
        achieved, matmul = 6 * n_params * ROWS * WIDTH / shortcut, statistics.median(peak)
        print(f"SmolLM2-135M ({n_params / 1e6:.1f}M params), fp32, 1 thread on core {TRAINER_CORE}: train step "
              f"{ROWS}x{WIDTH} tokens {shortcut:.2f} s = {achieved / 1e9:.1f} GFLOP/s; 1024^3 matmul "
              f"{matmul / 1e9:.1f} GFLOP/s; train_step_vs_matmul_flops: {achieved / matmul:.3f}")
        print(f"old-logprob pass separate {separate:.2f} s, shortcut {shortcut:.2f} s (median of {REPEATS}); "
              f"step_time_shortcut_vs_separate: {shortcut / separate:.3f}")

        lengths = realistic_lengths()
        before, after, budget, _ = computed_tokens(lengths)
        real = int(lengths.sum())
        print(f"computed/real tokens, realistic mix: padded to the longest row {before / real:.3f}, "
              f"grouped by length {after / real:.3f}, 16k-token budget {budget / real:.3f}")

        sync = trainer_steps(trainer, 3)[1:]
        trainer.cfg = dataclasses.replace(trainer.cfg, rollout=dataclasses.replace(trainer.cfg.rollout, async_steps=1))
        trainer.rollouts = RolloutPipeline(1, trainer.rollouts.next_prompts, trainer.rollouts.run)
        one_off = trainer_steps(trainer, 4)[1:]
        s, a = statistics.median(sync), statistics.median(one_off)
        print(f"iGRPO step (2 prompts x (2 drafts + 2 refinements), <= 96 tokens), vLLM pinned to core "
              f"{SERVER_CORE}, trainer to core {TRAINER_CORE}: on-policy {[round(t, 1) for t in sync]} s, "
              f"async_steps=1 {[round(t, 1) for t in one_off]} s")
        print(f"async_vs_sync_step_time: {a / s:.3f}")


if __name__ == "__main__":
    main()
