"""Every process the project starts ends when the process that started it dies, however it dies.

A SIGKILLed rank runs no ``finally`` and no ``atexit``, so cleanup code alone leaves its vLLM
server (API server + EngineCore + workers, ~2 GB, re-parented to PID 1, still holding the port)
and dist_checkpointing's helper processes behind. Two kernel mechanisms do not need the owner's
cooperation:

- ``prctl(PR_SET_PDEATHSIG)``: the kernel signals a child when its parent dies
  (:func:`die_with_parent`, run in the child: ``preexec_fn`` or a multiprocessing initializer).
  It is tied to the *thread* that started the child, so start children from a thread that
  lives as long as they should (the main thread).
- a process group: vLLM's engine processes are the server's grandchildren and are told nothing
  when the API server dies. :func:`guarded_command` runs the server under a guard (this module as
  a program) that leads a new process group, dies with its owner, and SIGKILLs its whole group
  when the server exits or the guard is told to stop; :func:`stop_group` ends a group whether or
  not its leader is still alive.

Linux only; elsewhere :func:`die_with_parent` does nothing (the group still ends on ``stop``).
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies; exit now if it already has."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the request was in place
        os.kill(os.getpid(), sig)


def guarded_command(cmd: list[str]) -> list[str]:
    """``cmd`` run under the guard: start it with ``start_new_session=True`` and
    ``preexec_fn=die_with_parent`` (see :func:`start_guarded`)."""
    return [sys.executable, "-m", "igrpo_megatron.lifetime", "--", *cmd]


def start_guarded(cmd: list[str], **popen_kwargs) -> subprocess.Popen:
    """Start ``cmd`` so that it and everything it starts end with this process (or on stop_group)."""
    return subprocess.Popen(guarded_command(cmd), start_new_session=True,
                            preexec_fn=lambda: die_with_parent(signal.SIGTERM), **popen_kwargs)


def group_members(pgid: int) -> list[int]:
    """The live (non-zombie) processes of group ``pgid``."""
    import psutil

    found = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop_group(pgid: int, timeout_s: float = 30.0) -> None:
    """SIGTERM every process of group ``pgid``, SIGKILL what is left after ``timeout_s``; return
    when the group is empty. Its leader may be long gone: a group lives while any member does."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        _signal_all(group_members(pgid), sig)
        deadline = time.monotonic() + wait_s
        while group_members(pgid):
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        else:
            return
    raise RuntimeError(f"process group {pgid} still has members {group_members(pgid)} after SIGKILL")


def _end_rest_of_group() -> None:
    """SIGKILL every other member of this process's group and reap the ones that became ours."""
    me, pgid = os.getpid(), os.getpgid(0)
    while others := [pid for pid in group_members(pgid) if pid != me]:
        _signal_all(others, signal.SIGKILL)
        time.sleep(0.05)
        _reap()


def _reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def _guard(cmd: list[str], grace_s: float = 30.0) -> int:
    """Run ``cmd`` in this (new) process group; when it exits or we are told to stop, end the group.

    The guard is a child subreaper, so the server's orphaned grandchildren become its children
    and are reaped here (a container's PID 1 may never reap them). On SIGTERM (``stop()``, or the
    owner's death) the server gets SIGTERM and ``grace_s`` to shut down cleanly.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    child = subprocess.Popen(cmd)

    def on_term(signum, frame):
        signal.signal(signal.SIGALRM, lambda *_: _signal_all([child.pid], signal.SIGKILL))
        signal.alarm(int(grace_s))
        child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        return child.wait()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # Grandchildren (vLLM's EngineCore and workers) get no word of the API server's end.
        _end_rest_of_group()


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(_guard(args[1:] if args[:1] == ["--"] else args))
