"""The one way every igrpo-* command ends: a user's mistake is one line and exit 2, a bug a traceback.

A :class:`~igrpo_megatron.errors.UserError` (config, data, model path, damaged checkpoint,
unreachable server, full disk) prints as ``<prog>: <label>: <first line of the message>`` on rank 0
only (under torchrun every rank hits the same mistake; one line is enough), exit code 2. Any
other exception is the project's own bug and keeps its traceback; ``IGRPO_DEBUG=1`` shows the
traceback of user errors too.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Optional, Sequence

from igrpo_megatron.errors import UserError

DEBUG_ENV = "IGRPO_DEBUG"
USER_ERROR_EXIT = 2


def run_cli(prog: str, body: Callable[[Optional[Sequence[str]]], Optional[int]],
            argv: Optional[Sequence[str]] = None) -> int:
    """``body(argv)``'s exit code (``None`` is 0), with user errors turned into one line, exit 2."""
    try:
        return body(argv) or 0
    except UserError as e:
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        if int(os.environ.get("RANK", "0")) == 0:
            lines = str(e).strip().splitlines() or [type(e).__name__]
            print(f"{prog}: {e.label}: {lines[0]}", file=sys.stderr)
        return USER_ERROR_EXIT
