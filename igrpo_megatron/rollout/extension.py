"""Worker-side weight loading, mixed into vLLM's worker with ``--worker-extension-cls``.

The trainer calls these methods through the server's ``/collective_rpc`` route, which forwards
JSON only, so tensors arrive either as a path on a shared filesystem or as base64 safetensors
bytes. Tensors carry Hugging Face names (``model.layers.0.self_attn.q_proj.weight``, unfused);
vLLM's own ``load_weights`` fuses q/k/v and gate/up and shards them for tensor parallelism.

Loading goes through the worker's ``reload_weights`` and never ``model.load_weights`` directly:
vLLM's CPU worker pre-packs linear weights for oneDNN and leaves empty parameters behind, so a
direct load fails; ``reload_weights`` restores the parameters, loads and re-packs them (and on GPUs
re-runs the post-load processing, e.g. quantization). Every method runs on every worker (each
TP rank takes its own shard of each tensor); the loading ones return the number of tensors loaded.

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

    def igrpo_stream_begin(self) -> int:
        """Start one weight update whose tensors arrive in later calls, each loaded on arrival.

        ``reload_weights`` runs in a thread of this worker, fed by :meth:`igrpo_stream_file` and
        :meth:`igrpo_stream_bytes`; vLLM processes each layer as soon as its last tensor arrives.
        The trainer sends bucket k and writes bucket k+1 while the server loads k, so an update
        costs about the slower of the two sides instead of their sum. The engine must stay paused
        for the whole stream. A stream left open by a trainer that died is ended first (its
        unloaded layers keep their old weights; the new stream replaces every layer). Returns the
        number of tensors the abandoned stream had loaded.
        """
        stale = self.__dict__.pop("_igrpo_stream", None)
        stale_n = stale.finish()[0] if stale is not None else 0
        self._igrpo_stream = _LoadStream(self)
        return stale_n

    def igrpo_stream_file(self, path: str) -> int:
        """Load a complete ``.safetensors`` file (or a folder of them) into the open stream."""
        return self._igrpo_open_stream().load(("files", _safetensors_files(path)))

    def igrpo_stream_bytes(self, payload: str) -> int:
        """Load one base64 safetensors bucket into the open stream (the ``http`` transport)."""
        return self._igrpo_open_stream().load(("bytes", base64.b64decode(payload)))

    def igrpo_stream_end(self) -> int:
        """Finish the update (vLLM's post-load processing); returns the number of tensors loaded."""
        n, error = self._igrpo_open_stream().finish()
        del self._igrpo_stream
        if error is not None:
            raise RuntimeError(f"loading streamed weights failed after {n} tensors: {error!r}") from error
        return n

    def _igrpo_open_stream(self) -> "_LoadStream":
        stream = self.__dict__.get("_igrpo_stream")
        if stream is None:
            raise RuntimeError("no weight stream is open on this worker: call igrpo_stream_begin first")
        return stream


class _LoadStream:
    """One ``reload_weights`` call in a thread that takes (kind, data) items from a queue until None.

    The RPC thread hands over one item and waits for it to be loaded. Waiting matters: vLLM's
    worker loop busy-polls its message queue for a second after every message while holding the
    GIL between polls, and a load thread competing with it runs several times slower.
    """

    def __init__(self, worker) -> None:
        import queue
        import threading

        self.queue: "queue.SimpleQueue" = queue.SimpleQueue()
        self.tensors = _Counter(self._tensors())
        self.current = None  # the Event of the item being loaded
        self.ended = False  # the end marker was taken
        self.error: BaseException | None = None
        device = getattr(worker, "device", None)
        self.thread = threading.Thread(target=self._run, args=(worker, device), name="igrpo-weight-stream",
                                       daemon=True)
        self.thread.start()

    def load(self, item) -> int:
        import threading

        done = threading.Event()
        self.queue.put((item, done))
        done.wait()
        if self.error is not None:
            raise RuntimeError(f"loading streamed weights failed after {self.tensors.n} tensors: "
                               f"{self.error!r}") from self.error
        return self.tensors.n

    def finish(self) -> tuple[int, BaseException | None]:
        self.queue.put(None)
        self.thread.join()
        return self.tensors.n, self.error

    def _tensors(self) -> Iterator:
        from safetensors.torch import load

        while (entry := self.queue.get()) is not None:
            (kind, data), self.current = entry
            yield from (_iter_files(data) if kind == "files" else load(data).items())
            self.current.set()  # vLLM asked for the next tensor: every tensor of this item is loaded
        self.ended = True

    def _run(self, worker, device) -> None:
        import torch

        try:
            if device is not None and device.type == "cuda":
                torch.cuda.set_device(device)  # the CUDA device is per thread
            worker.reload_weights(weights_iterator=self.tensors)
        except BaseException as e:  # noqa: BLE001 - raised by load() and igrpo_stream_end
            self.error = e
        finally:
            if self.current is not None:
                self.current.set()
            while not self.ended:  # release every waiter: take items until the end marker
                entry = self.queue.get()
                self.ended = entry is None
                if entry is not None:
                    entry[1].set()


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
