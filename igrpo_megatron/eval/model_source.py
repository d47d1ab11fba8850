"""What ``igrpo-eval --model`` names: an HF folder, a hub name, or a Megatron checkpoint.

vLLM serves HF folders only, so a Megatron checkpoint (a training run's root, which means its
latest, or one ``iter_*`` folder) is converted by ``igrpo-convert to-hf``'s own code into a
temporary folder under ``eval.output_dir`` that is removed when the evaluation ends. The model's
identity (its path and the names, sizes and times of its weight files) goes into the samples'
settings, so samples of a retrained model are never mixed with those of the old one.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Iterator

from igrpo_megatron.config import ConfigError

_HF_WEIGHTS = (".safetensors", ".bin")


@dataclass(frozen=True)
class EvalModel:
    hf_path: str  # what vLLM and the tokenizer load: an HF folder or a hub name
    identity: str  # what the samples' settings record


def _files_digest(root: str, suffixes: tuple[str, ...] = ()) -> str:
    entries = []
    for folder, _, files in os.walk(root):
        for name in sorted(files):
            if not suffixes or name.endswith(suffixes):
                st = os.stat(os.path.join(folder, name))
                entries.append(f"{os.path.relpath(os.path.join(folder, name), root)}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()[:16]


@contextlib.contextmanager
def resolve_model(path: str, work_dir: str) -> Iterator[EvalModel]:
    """The HF form of ``path``; a Megatron checkpoint is converted into ``work_dir`` for the duration."""
    if not os.path.exists(path):
        yield EvalModel(path, f"hub:{path}")  # vLLM and transformers fetch it (or say it does not exist)
        return
    real = os.path.realpath(path)
    if os.path.isfile(os.path.join(path, "config.json")):
        yield EvalModel(path, f"{real} weights {_files_digest(real, _HF_WEIGHTS)}")
        return
    from igrpo_megatron.checkpoint import CheckpointError, resolve_checkpoint

    try:
        ckpt = resolve_checkpoint(path)
    except CheckpointError as e:
        raise ConfigError(f"model {path}: not an HF folder (no config.json) nor a Megatron checkpoint ({e})") from None
    os.makedirs(work_dir, exist_ok=True)
    out = tempfile.mkdtemp(prefix=".hf-from-megatron-", dir=work_dir)
    try:
        _to_hf(ckpt, out)
        yield EvalModel(out, f"megatron:{os.path.realpath(ckpt)} weights {_files_digest(ckpt)}")
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _to_hf(ckpt: str, out: str) -> None:
    """``igrpo-convert to-hf --ckpt CKPT --out OUT``; a checkpoint it cannot read is a one-line error."""
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException: a torn shard raises it

    from igrpo_megatron.checkpoint import CheckpointError
    from igrpo_megatron.cli.convert import build_parser, run
    from igrpo_megatron.weights.mapping import WeightMappingError

    try:
        run(build_parser().parse_args(["to-hf", "--ckpt", ckpt, "--out", out, "--force"]))
    except (CheckpointError, CheckpointException, WeightMappingError, ConfigError, OSError, RuntimeError,
            ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"model {ckpt}: cannot convert this Megatron checkpoint to HF ({type(e).__name__}: "
                          f"{first}); check it with igrpo-convert to-hf") from None
