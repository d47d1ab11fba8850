"""Stop between steps on a signal, save, and exit for a requeue: the trainer's side of
launch/common.sh's time-limit handling.

Slurm sends the batch script SIGUSR1 some time before the job's limit (``sbatch
--signal=B:USR1@<seconds>``); the script forwards it to the trainer's step. ``scancel`` and
preemption send SIGTERM instead. Either signal only sets a flag here. At each step boundary the
loop calls :func:`all_ranks_stop`, a MAX all-reduce of the flag: the signal reaches the ranks at
different times (one may be inside the rollout, another blocked in a collective), and a rank
that stopped alone would hang the others. When any rank saw a signal, every rank saves the same
checkpoint and the loop raises :class:`StopForRequeue`; ``igrpo-train`` exits with
:data:`REQUEUE_EXIT_CODE`, which the batch script turns into ``scontrol requeue``, and the
requeued job resumes from that checkpoint.

The step in flight is finished, not abandoned: stopping inside a rollout or an optimizer step
would leave the data position and the weights between two steps. So the warning must cover one
step plus one save (launch/common.sh says how to size it). SIGTERM gives no such margin (Slurm
sends SIGKILL ``KillWait`` seconds later, torchrun 30 s after forwarding it): if the boundary is
not reached within ``term_grace_s``, a second SIGTERM (sent to ourselves) exits at once as before,
through the trainer's ``close()``, so rank 0's vLLM server and reward workers do not outlive it.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Optional

# sysexits.h EX_TEMPFAIL, "temporary failure, try again": stopped at a checkpoint, not done.
REQUEUE_EXIT_CODE = 75
# Seconds between a SIGTERM and giving up on reaching the step boundary; below torchrun's 30 s.
TERM_GRACE_S = 20.0

_owner_pid: Optional[int] = None
_received: Optional[str] = None  # name of the first stop signal
_term_seen = False
_term_grace_over = False
_term_grace_s = TERM_GRACE_S


class StopForRequeue(Exception):
    """Raised by the training loop after the checkpoint of ``step`` is written on a stop signal."""

    def __init__(self, step: int, signal_name: str):
        super().__init__(f"stopped on {signal_name} after step {step}; its checkpoint is saved")
        self.step, self.signal_name = step, signal_name


def _not_ours(signum: int) -> bool:
    """Forked children (the reward workers) inherit the handlers; there USR1 is the parent's to
    act on and SIGTERM keeps its default (exit)."""
    if os.getpid() == _owner_pid:
        return False
    if signum == signal.SIGTERM:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    return True


def _on_usr1(signum, frame) -> None:
    global _received
    if _not_ours(signum):
        return
    _received = _received or "SIGUSR1"


def _end_term_grace() -> None:
    global _term_grace_over
    _term_grace_over = True
    os.kill(os.getpid(), signal.SIGTERM)


def _on_term(signum, frame) -> None:
    global _received, _term_seen
    if _not_ours(signum):
        return
    if _term_grace_over:
        raise SystemExit(128 + signum)
    if not _term_seen:
        # Slurm and torchrun each send one SIGTERM, milliseconds apart: only a SIGTERM after
        # the grace (this timer's own, at the latest) ends the process.
        _term_seen, _received = True, _received or "SIGTERM"
        timer = threading.Timer(_term_grace_s, _end_term_grace)
        timer.daemon = True
        timer.start()


def install_handlers(term_grace_s: float = TERM_GRACE_S) -> None:
    """Turn SIGUSR1 and SIGTERM into a stop request read at the next step boundary (main thread)."""
    global _owner_pid, _term_grace_s
    _owner_pid, _term_grace_s = os.getpid(), term_grace_s
    signal.signal(signal.SIGUSR1, _on_usr1)
    signal.signal(signal.SIGTERM, _on_term)


def stop_requested() -> Optional[str]:
    """The first stop signal this process received (``"SIGUSR1"``/``"SIGTERM"``), or None. Local."""
    return _received


def all_ranks_stop() -> Optional[str]:
    """Collective (every rank, same point): the stop signal if any rank received one, else None.
    One int32 MAX all-reduce on the default group, on the GPU when the backend is NCCL."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return _received
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([int(_received is not None)], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return (_received or "a signal on another rank") if flag.item() else None
