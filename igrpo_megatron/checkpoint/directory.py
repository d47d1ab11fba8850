"""The on-disk layout of a checkpoint folder and the file operations that keep it consistent.

::

    <ckpt_root>/
        iter_0000040/          complete checkpoints (a folder only gets this name when complete)
        iter_0000042/
        iter_0000044.tmp/      a save in progress, or one that crashed: never loaded
        latest                 one line, the folder name of the newest complete checkpoint

A save writes everything into ``iter_XXXXXXX.tmp`` and renames it when every rank has finished,
so a folder without the suffix is complete by construction (``rename`` is atomic on POSIX file
systems, including Lustre/GPFS within one directory). ``latest`` is replaced atomically after the
rename. Nothing here talks to torch.distributed: the caller decides which rank runs what.
"""
from __future__ import annotations

import os
import re
import shutil
from typing import Optional

from igrpo_megatron.errors import UserError

LATEST_FILE = "latest"
TMP_SUFFIX = ".tmp"
META_FILE = "meta.json"  # written last into the .tmp folder; its presence marks our own checkpoints
_ITER_RE = re.compile(r"^iter_(\d{7,})$")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint cannot be loaded as asked (missing, damaged, foreign or unsafe); the message
    names the folder or file and what to change."""


def iter_dir_name(step: int) -> str:
    return f"iter_{step:07d}"


def step_of(path: str) -> Optional[int]:
    """The step of a complete checkpoint folder name (``None`` for anything else, ``.tmp`` included)."""
    m = _ITER_RE.match(os.path.basename(os.path.normpath(path)))
    return int(m.group(1)) if m else None


def _fsync_dir(path: str) -> None:
    """Persist a rename/creation in ``path`` (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see either the old or the new content, never half."""
    tmp = f"{path}{TMP_SUFFIX}.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def complete_checkpoints(ckpt_root: str) -> list[tuple[int, str]]:
    """``(step, path)`` of every complete checkpoint under ``ckpt_root``, oldest first."""
    if not os.path.isdir(ckpt_root):
        return []
    found = []
    for name in os.listdir(ckpt_root):
        step = step_of(name)
        path = os.path.join(ckpt_root, name)
        if step is not None and os.path.isfile(os.path.join(path, META_FILE)):
            found.append((step, path))
    return sorted(found)


def find_latest(ckpt_root: str) -> Optional[str]:
    """The checkpoint to resume from, or ``None`` when there is none.

    ``latest`` decides when it names a complete checkpoint (so a user can roll back by editing it);
    when it is missing or dangling (a crash between the rename and the pointer update, or a
    copied folder) the newest complete checkpoint is used. ``.tmp`` folders are never returned.
    """
    pointer = os.path.join(ckpt_root, LATEST_FILE)
    if os.path.isfile(pointer):
        with open(pointer, encoding="utf-8") as f:
            name = f.read().strip()
        path = os.path.join(ckpt_root, name)
        if step_of(name) is not None and os.path.isfile(os.path.join(path, META_FILE)):
            return path
    found = complete_checkpoints(ckpt_root)
    return found[-1][1] if found else None


def prepare_tmp_dir(ckpt_root: str, step: int) -> str:
    """Create an empty ``iter_XXXXXXX.tmp`` (removing a crashed attempt at the same step)."""
    tmp = os.path.join(ckpt_root, iter_dir_name(step) + TMP_SUFFIX)
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    return tmp


def commit(tmp_dir: str) -> str:
    """Rename a finished ``.tmp`` folder to its final name and point ``latest`` at it.

    A complete checkpoint of the same step (a run resumed from an older one saves it again) is
    moved aside first and removed only after the new one is in place.
    """
    assert tmp_dir.endswith(TMP_SUFFIX), tmp_dir
    final = tmp_dir[: -len(TMP_SUFFIX)]
    root = os.path.dirname(final)
    old = None
    if os.path.exists(final):
        old = f"{final}.old{TMP_SUFFIX}"
        if os.path.exists(old):
            shutil.rmtree(old)
        os.rename(final, old)
    os.rename(tmp_dir, final)
    _fsync_dir(root)
    write_atomic(os.path.join(root, LATEST_FILE), os.path.basename(final) + "\n")
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def prune(ckpt_root: str, keep_last: int) -> list[str]:
    """Delete all but the newest ``keep_last`` complete checkpoints and leftover ``.tmp`` folders.

    Called after a commit, so the checkpoint just written is always kept; the one ``latest``
    names is kept too even if it is older (a user who rolled back keeps their choice).
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    keep = {path for _, path in complete_checkpoints(ckpt_root)[-keep_last:]}
    latest = find_latest(ckpt_root)
    if latest is not None:
        keep.add(latest)
    removed = []
    for _, path in complete_checkpoints(ckpt_root):
        if path not in keep:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    for name in os.listdir(ckpt_root):
        path = os.path.join(ckpt_root, name)
        if name.startswith("iter_") and name.endswith(TMP_SUFFIX) and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
