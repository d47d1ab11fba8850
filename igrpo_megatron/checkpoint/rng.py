"""Per-rank random-number-generator state, saved without pickle.

A resumed run reproduces the uninterrupted one bit for bit only if every generator that feeds
it continues where it stopped: Python's ``random``, NumPy's global generator, torch's CPU (and,
on GPU nodes, current CUDA device) generator, and Megatron's tensor-parallel RNG tracker (dropout
inside TP regions). Each rank's state differs, so each rank writes its own file
``rng/rank_XXXXX.safetensors``: the generator states as uint8/int64 tensors, the scalar parts as
JSON in the safetensors header. Loading it executes no code.
"""
from __future__ import annotations

import json
import os
import random

import numpy as np
import torch
from safetensors.torch import load_file, save_file

RNG_DIR = "rng"
_TRACKER_PREFIX = "tracker."


def rng_file(ckpt_dir: str, rank: int) -> str:
    return os.path.join(ckpt_dir, RNG_DIR, f"rank_{rank:05d}.safetensors")


def _tracker():
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    return get_cuda_rng_tracker()


def save_rng_state(ckpt_dir: str, rank: int) -> None:
    """Write this rank's generator states into ``ckpt_dir``."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["torch_cuda"] = torch.cuda.get_rng_state()
    for name, state in _tracker().get_states().items():
        if not isinstance(state, torch.Tensor):
            raise TypeError(f"Megatron RNG tracker state {name!r} is a {type(state).__name__}, not a tensor; "
                            f"CUDA-graph RNG trackers are not supported by igrpo_megatron.checkpoint")
        tensors[_TRACKER_PREFIX + name] = state.detach().cpu()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np_keys.astype(np.int64))
    py_version, py_state, py_gauss = random.getstate()
    scalars = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, int(np_pos), int(np_has_gauss), float(np_gauss)],
    }
    tensors = {k: v.contiguous().clone() for k, v in tensors.items()}
    os.makedirs(os.path.join(ckpt_dir, RNG_DIR), exist_ok=True)
    save_file(tensors, rng_file(ckpt_dir, rank), metadata={"scalars": json.dumps(scalars)})


def load_rng_state(ckpt_dir: str, rank: int) -> None:
    """Restore this rank's generator states from ``ckpt_dir`` (written by :func:`save_rng_state`)."""
    from safetensors import safe_open

    path = rng_file(ckpt_dir, rank)
    with safe_open(path, framework="pt") as f:
        scalars = json.loads(f.metadata()["scalars"])
    tensors = load_file(path)
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available() and "torch_cuda" in tensors:
        torch.cuda.set_rng_state(tensors["torch_cuda"])
    tracker_states = {k[len(_TRACKER_PREFIX):]: v for k, v in tensors.items() if k.startswith(_TRACKER_PREFIX)}
    if tracker_states:  # Megatron keeps these as CPU byte tensors on GPU nodes too
        _tracker().set_states(tracker_states)
    np_name, np_pos, np_has_gauss, np_gauss = scalars["numpy"]
    np.random.set_state((np_name, tensors["numpy_keys"].numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    py_version, py_state, py_gauss = scalars["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
