"""Distributed checkpoints: save, resume bit-exactly, reload at another TP x PP layout.

The trainer calls :func:`save_checkpoint` every ``train.save_every`` steps and, at start-up,
:func:`find_latest` + :func:`load_checkpoint` when ``train.resume`` is set.
"""
from igrpo_megatron.checkpoint.directory import CheckpointError, complete_checkpoints, find_latest
from igrpo_megatron.checkpoint.dist_checkpoint import (
    LoadedCheckpoint,
    load_checkpoint,
    read_meta,
    resolve_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)

__all__ = [
    "CheckpointError",
    "LoadedCheckpoint",
    "complete_checkpoints",
    "find_latest",
    "load_checkpoint",
    "read_meta",
    "resolve_checkpoint",
    "save_checkpoint",
    "verify_checkpoint",
]
