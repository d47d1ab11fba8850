"""``python -m igrpo_megatron.cli.torchrun [torchrun args]``: torchrun as launch/common.sh runs it
on every training node, with two changes for time-limit requeues (igrpo_megatron/preemption.py).

- SIGUSR1 is ignored here. The batch script forwards Slurm's warning to the whole trainer step;
  torchrun has no handler for it and would die of it, taking the ranks down before they save.
  The ranks inherit the ignored disposition until ``preemption.install_handlers`` replaces it.
- torchrun exits 1 whatever its ranks exit with. When the ranks stopped at a checkpoint
  (``preemption.REQUEUE_EXIT_CODE``), this exits with that code, so the batch script can tell a
  requeue from a failure. Ranks torchrun killed itself on its way out (negative codes) do not count.
"""
from __future__ import annotations

import signal
import sys

from igrpo_megatron.preemption import REQUEUE_EXIT_CODE


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        torchrun_main(argv)
    except ChildFailedError as e:
        codes = {f.exitcode for f in e.failures.values()}
        if REQUEUE_EXIT_CODE in codes and all(c == REQUEUE_EXIT_CODE or c < 0 for c in codes):
            return REQUEUE_EXIT_CODE
        return 1  # torchrun's @record has logged the failures
    return 0


if __name__ == "__main__":
    sys.exit(main())
