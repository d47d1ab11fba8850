"""Stand-in for ``igrpo-train`` around the real stop interface (igrpo_megatron/preemption.py), for
the requeue tests: the launcher's torchrun wrapper starts it, Slurm's signals reach it through the
real batch script, and it stops, saves and exits exactly as the trainer's loop does.

Each rank joins a gloo group; a step sleeps ``PROBE_STEP_S`` seconds; rank 0 appends
``{"step", "restart"}`` to ``$PROBE_OUT/metrics.jsonl`` per step; the "checkpoint" is the step
number in ``$PROBE_OUT/ckpt.json``, written after a barrier like a collective save. Event lines
(``PROBE ...``) go to stdout, i.e. the job's output file. ``--steps N`` ends the run at step N;
``PROBE_SELF_SIGNAL=rank:step:SIGNAME`` makes that rank alone signal itself during that step.
Exits 0 when done, ``REQUEUE_EXIT_CODE`` after a stop, like ``igrpo-train``.
"""
import argparse
import json
import os
import signal
import sys
import time

import torch.distributed as dist

from igrpo_megatron import preemption


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--config")  # the launcher's arguments, unused
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    preemption.install_handlers(term_grace_s=float(os.environ.get("PROBE_TERM_GRACE_S", preemption.TERM_GRACE_S)))
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    out = os.environ["PROBE_OUT"]
    ckpt = os.path.join(out, "ckpt.json")
    restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    step = json.load(open(ckpt))["step"] if os.path.exists(ckpt) else 0
    saved = step
    self_signal = os.environ.get("PROBE_SELF_SIGNAL", "").split(":")
    print(f"PROBE rank {rank} restart {restart} resumes at step {step}", flush=True)
    while step < args.steps:
        stop = preemption.all_ranks_stop()
        if stop:
            print(f"PROBE rank {rank} stops after step {step} (own signal: {preemption.stop_requested()}, "
                  f"agreed: {stop})", flush=True)
            if saved != step:
                dist.barrier()
                if rank == 0:
                    with open(ckpt + ".tmp", "w") as f:
                        json.dump({"step": step}, f)
                    os.replace(ckpt + ".tmp", ckpt)
                    print(f"PROBE checkpoint step {step}", flush=True)
            dist.barrier()
            dist.destroy_process_group()
            return preemption.REQUEUE_EXIT_CODE
        if self_signal[0] and (int(self_signal[0]), int(self_signal[1])) == (rank, step + 1):
            os.kill(os.getpid(), getattr(signal, self_signal[2]))
        time.sleep(float(os.environ.get("PROBE_STEP_S", "0.5")))
        step += 1
        if rank == 0:
            with open(os.path.join(out, "metrics.jsonl"), "a") as f:
                f.write(json.dumps({"step": step, "restart": restart}) + "\n")
    dist.barrier()
    print(f"PROBE rank {rank} done at step {step}", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
