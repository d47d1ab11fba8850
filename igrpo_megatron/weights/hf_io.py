"""Hugging Face safetensors folders: a lazy reader and a streaming, sharded writer.

The reader opens each ``*.safetensors`` file with ``safe_open`` and reads a tensor only when asked,
so a pipeline stage touches only its own layers. The writer takes a (name, tensor) stream and cuts
it into ``model-0000i-of-0000n.safetensors`` shards plus ``model.safetensors.index.json`` -- the
layout transformers' ``from_pretrained`` and vLLM load -- holding one shard in memory at a time.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Iterable, Optional

import torch

INDEX_FILE = "model.safetensors.index.json"
#: Files of an HF folder that are weights (not copied as config/tokenizer files).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")
_WEIGHT_INDEXES = (INDEX_FILE, "pytorch_model.bin.index.json")


class HFSafetensors:
    """Read tensors (or slices of them) by HF name from a folder (sharded with an index, or a single file)."""

    def __init__(self, folder: str):
        self.folder = folder
        self._handles: dict = {}
        self.used: set[str] = set()  # names read so far (an import checks nothing was left over)
        index = os.path.join(folder, INDEX_FILE)
        if os.path.exists(index):
            with open(index, encoding="utf-8") as f:
                self.file_of = dict(json.load(f)["weight_map"])
        else:
            files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")) if os.path.isdir(folder) else []
            if not files:
                raise FileNotFoundError(
                    f"{folder}: no {INDEX_FILE} and no *.safetensors file; give a Hugging Face model folder "
                    f"saved with safetensors (save_pretrained(..., safe_serialization=True))")
            self.file_of = {}
            for file in files:
                for name in self._open(file).keys():
                    self.file_of[name] = file

    def _open(self, file: str):
        from safetensors import safe_open

        if file not in self._handles:
            path = os.path.join(self.folder, file)
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path} is listed in {INDEX_FILE} but missing")
            self._handles[file] = safe_open(path, framework="pt")
        return self._handles[file]

    def names(self) -> set[str]:
        return set(self.file_of)

    def _slice(self, name: str):
        if name not in self.file_of:
            raise KeyError(f"{self.folder} holds no tensor {name!r}; its config.json does not match its weights")
        return self._open(self.file_of[name]).get_slice(name)

    def shape(self, name: str) -> list[int]:
        return list(self._slice(name).get_shape())

    def get(self, name: str, dim: Optional[int] = None, start: int = 0, stop: Optional[int] = None) -> torch.Tensor:
        """The tensor ``name``, or only its ``[start:stop)`` slice along ``dim`` (read from disk alone)."""
        sl = self._slice(name)
        self.used.add(name)
        if dim is None:
            return sl[:]
        index = [slice(None)] * len(sl.get_shape())
        index[dim] = slice(start, stop)
        return sl[tuple(index)]

    def dtype(self, name: str) -> torch.dtype:
        """The stored dtype of ``name``, from a one-element read (safetensors' own names, ``F32``,
        ``BF16``, would need a table of their own)."""
        sl = self._slice(name)
        return sl[tuple(slice(0, 1) for _ in sl.get_shape())].dtype

    def close(self) -> None:
        self._handles.clear()

    def __enter__(self) -> "HFSafetensors":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def save_safetensors_shards(pairs: Iterable[tuple[str, torch.Tensor]], out_dir: str,
                            max_shard_bytes: int = 2 << 30, progress=None) -> dict:
    """Write a (name, tensor) stream as sharded safetensors plus the index; returns the index.

    A shard is written as soon as it is full, so memory holds at most one shard. ``progress``
    (e.g. a tqdm bar) is advanced by the bytes of each tensor.
    """
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    shard: dict[str, torch.Tensor] = {}
    shard_bytes, total_bytes = 0, 0
    written: list[list[str]] = []  # tensor names per shard, in order

    def flush() -> None:
        nonlocal shard, shard_bytes
        save_file(shard, os.path.join(out_dir, f".shard-{len(written):05d}.tmp"), metadata={"format": "pt"})
        written.append(list(shard))
        shard, shard_bytes = {}, 0

    for name, tensor in pairs:
        nbytes = tensor.numel() * tensor.element_size()
        if shard and shard_bytes + nbytes > max_shard_bytes:
            flush()
        if name in shard or any(name in names for names in written):
            raise ValueError(f"tensor {name!r} exported twice")
        shard[name] = tensor.detach().cpu().contiguous()
        shard_bytes += nbytes
        total_bytes += nbytes
        if progress is not None:
            progress.update(nbytes)
    if shard:
        flush()
    weight_map = {}
    n = len(written)
    for i, names in enumerate(written):
        final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        os.replace(os.path.join(out_dir, f".shard-{i:05d}.tmp"), os.path.join(out_dir, final))
        weight_map.update({name: final for name in names})
    index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(out_dir, INDEX_FILE), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)
    return index


def copy_non_weight_files(src: str, dst: str, skip: Optional[set[str]] = None) -> list[str]:
    """Copy config.json, generation_config.json, tokenizer and template files (everything but
    weights and their indexes) from ``src`` to ``dst``; returns the copied names."""
    os.makedirs(dst, exist_ok=True)
    copied = []
    for name in sorted(os.listdir(src)):
        path = os.path.join(src, name)
        if (not os.path.isfile(path) or name.endswith(_WEIGHT_SUFFIXES) or name in _WEIGHT_INDEXES
                or name in (skip or set())):
            continue
        shutil.copy2(path, os.path.join(dst, name))
        copied.append(name)
    return copied
