"""Distributed checkpoints: save, resume bit-exactly, reload at another TP x PP layout.

The trainer holds a :class:`Checkpointer`, which decides when to save (:func:`save_checkpoint`)
and, at start-up, what to resume from (:func:`find_latest` + :func:`load_checkpoint`).
"""
from igrpo_megatron.checkpoint.checkpointer import Checkpointer, Resumed
from igrpo_megatron.checkpoint.directory import complete_checkpoints, find_latest
from igrpo_megatron.checkpoint.dist_checkpoint import (
    CheckpointError,
    LoadedCheckpoint,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)

__all__ = [
    "CheckpointError",
    "Checkpointer",
    "LoadedCheckpoint",
    "Resumed",
    "complete_checkpoints",
    "find_latest",
    "load_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
]
