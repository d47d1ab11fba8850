"""Worker-side weight loading, mixed into vLLM's worker with ``--worker-extension-cls``.

The trainer calls these methods through the server's ``/collective_rpc`` route, which forwards
JSON only, so tensors arrive either as a path on a shared filesystem or as base64 safetensors
bytes. Tensors carry Hugging Face names (``model.layers.0.self_attn.q_proj.weight``, unfused);
vLLM's own ``load_weights`` fuses q/k/v and gate/up and shards them for tensor parallelism.

Loading goes through the worker's ``reload_weights`` and never ``model.load_weights`` directly:
vLLM's CPU worker pre-packs linear weights for oneDNN and leaves empty parameters behind, so a
direct load fails; ``reload_weights`` restores the parameters, loads and re-packs them (and on GPUs
re-runs the post-load processing, e.g. quantization). Every method loads into every worker (each
TP rank takes its own shard) and returns the number of tensors it loaded.

This module is imported inside the vLLM worker process; it imports no vLLM symbol itself.
"""
from __future__ import annotations

import base64
import glob
import os
from typing import Iterator


def _safetensors_files(path: str) -> list[str]:
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
        if not files:
            raise FileNotFoundError(f"no *.safetensors files in {path}")
        return files
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights path {path} does not exist on the rollout server "
                                f"(the disk transport needs rollout.refit_dir on a shared filesystem)")
    return [path]


def _iter_files(files: list[str]) -> Iterator:
    """Stream tensors file by file, so at most one tensor beyond the model is held in memory."""
    from safetensors import safe_open

    for f in files:
        with safe_open(f, framework="pt") as st:
            for name in st.keys():
                yield name, st.get_tensor(name)


class WeightSyncExtension:
    """Methods added to vLLM's worker (``self`` is the worker)."""

    def igrpo_load_safetensors(self, path: str) -> int:
        """Load every tensor of a ``.safetensors`` file, or of all such files in a folder."""
        counted = _Counter(_iter_files(_safetensors_files(path)))
        self.reload_weights(weights_iterator=counted)
        return counted.n

    def igrpo_stage_safetensors_b64(self, payload: str) -> int:
        """Keep one base64 safetensors bucket until :meth:`igrpo_commit_staged`.

        Buckets are staged and loaded in one ``reload_weights`` call because that call
        re-processes every layer it touches: a layer must arrive complete.
        """
        from safetensors.torch import load

        tensors = load(base64.b64decode(payload))
        staged = self.__dict__.setdefault("_igrpo_staged", {})
        staged.update(tensors)
        return len(tensors)

    def igrpo_commit_staged(self) -> int:
        """Load all staged tensors and drop them."""
        staged = self.__dict__.pop("_igrpo_staged", {})
        if not staged:
            raise RuntimeError("igrpo_commit_staged: nothing was staged")
        self.reload_weights(weights_iterator=iter(staged.items()))
        return len(staged)

    def igrpo_discard_staged(self) -> int:
        """Drop staged tensors after a failed update, so the next one starts clean."""
        return len(self.__dict__.pop("_igrpo_staged", {}))


class _Counter:
    """Iterator wrapper that counts what it yielded."""

    def __init__(self, it: Iterator) -> None:
        self.it, self.n = it, 0

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self.it)
        self.n += 1
        return item
