"""Push the trainer's new weights into the rollout servers ("refit"), behind one interface.

Input: an iterator of buckets, each a list of ``(hf_name, full_tensor)``, as
``igrpo_megatron.weights.export_hf_weights`` yields them on global rank 0 (it is a collective, so
every rank iterates it; only the sender gets non-empty buckets and talks to the servers).

One update, on every server::

    POST /pause?mode=wait           # rollout.refit_pause_mode
    transport.load(buckets)         # export, move and load, overlapped bucket by bucket
    POST /reset_prefix_cache        # cached KV blocks were computed by the old weights
    POST /update_weight_version     # the label vLLM attaches to every token it generates next
    POST /resume

The disk and http transports stream: each server's worker runs one ``reload_weights`` in a
thread fed bucket by bucket (``WeightSyncExtension.igrpo_stream_*``), so it loads bucket k while
the trainer exports and writes or sends bucket k+1, and an update costs about the slower of the
two sides rather than their sum. The servers are paused for the whole update: the trainer's loop
is synchronous (no generation runs during a refit), so the total is what counts, not the pause.

Weight-version labelling. vLLM attaches the engine's current version to each step's output
tokens and ``/inference/v1/generate`` returns them as spans, which the client turns into
``Sample.weight_version``. The version is set while the engine is paused and before resume, so:
with ``pause_mode=wait`` a request in flight finishes on the old weights under the old label,
and a request that arrived during the pause waits and runs entirely on the new weights under
the new label; with ``keep`` a frozen request continues on the new weights and its spans show two
versions (the client labels it with the older one, so it counts as stale); with ``abort`` it is
cancelled and the client retries it. Nothing is labelled from the client's clock.

Transports (``rollout.refit_transport``):

* ``disk``: the sender writes each bucket as a safetensors file into ``rollout.refit_dir`` (a
  filesystem every server can read) and, once it is closed, names it to every server, which
  loads it. Scales to any model size; needs only close-to-open consistency (NFS gives it).
* ``http``: each bucket travels base64-encoded in a ``/collective_rpc`` body. No shared
  filesystem needed; meant for small models.
* ``nccl`` (GPUs only, NOT tested here: this machine has no GPU): vLLM's NCCL weight-transfer
  engine; tensors are broadcast from the sender's GPU straight into the servers' GPUs.

If a load fails the server is left paused (it must not generate with half-loaded weights) and
:class:`RefitError` names it.
"""
from __future__ import annotations

import base64
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Protocol, Sequence

from igrpo_megatron.errors import UserError
from igrpo_megatron.config import ConfigError, RolloutConfig
from igrpo_megatron.registry import Registry
from igrpo_megatron.rollout.admin import ServerAdmin
from igrpo_megatron.weights.export import drain

if TYPE_CHECKING:
    import torch

    from igrpo_megatron.rollout.client import RolloutClient

Bucket = Sequence[tuple[str, "torch.Tensor"]]
log = logging.getLogger(__name__)


class RefitError(UserError, RuntimeError):
    """A weight update failed on a server; the server stays paused."""


@dataclass
class RefitStats:
    version: int
    num_tensors: int
    num_bytes: int
    pause_s: float  # POST /pause: with pause_mode=wait, waiting for the requests in flight
    load_s: float  # export + moving the bytes + loading them on the servers (overlapped)
    total_s: float  # the whole update, pause to resume


class Transport(Protocol):
    """How one update's buckets travel into the servers; the :class:`Refitter` pauses the servers
    before :meth:`load` and resets, labels and resumes them after it, whatever the transport."""

    num_tensors: int  # tensors of the last update, as the servers loaded them

    def __init__(self, cfg: RolloutConfig, admins: Sequence[ServerAdmin]) -> None: ...

    def load(self, buckets: Iterable[Bucket], version: int) -> int:
        """Move ``buckets`` into every (paused) server as weight ``version``; returns the bytes sent."""

    def cleanup(self) -> None:
        """Drop what older versions left behind (the disk transport's folders) once an update is in."""


def _is_sender() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _on_all(admins: Sequence[ServerAdmin], fn: Callable[[ServerAdmin], object]) -> list:
    """Run ``fn`` on every server in parallel; the first failure raises with the server's URL."""
    with ThreadPoolExecutor(max_workers=max(1, len(admins))) as pool:
        futures = [(a, pool.submit(fn, a)) for a in admins]
        results = []
        for admin, fut in futures:
            try:
                results.append(fut.result())
            except Exception as e:  # noqa: BLE001 - re-raised with the server named
                raise RefitError(f"weight update failed on {admin.url}: {e}") from e
        return results


def _stream(admins: Sequence[ServerAdmin], method: str, buckets: Iterable[Bucket],
            encode: Callable[[int, dict], str]) -> tuple[int, int]:
    """Load one update into every server, bucket by bucket; returns (tensors, bytes) sent.

    ``encode(index, tensors)`` turns a bucket into the argument of worker ``method`` (a file it
    wrote, or the bytes). The worker returns once its item is loaded, so it is called from a second
    thread while this one exports and encodes the next bucket: the two overlap. Measured on 2 cores
    (100M-parameter model, tmpfs, ``benchmarks/refit_latency.py``): 32 MB buckets took 0.5-0.9 s
    overlapped against 0.65-1.1 s for writing every bucket and then loading the folder, and 1.7 s
    for loading each bucket before writing the next (vLLM's workers busy-poll for 1 s after every
    message and then compete with the writes). A later quiet run gave 1.67 s for 32 MB buckets and
    0.80 s for one 386 MB bucket: where the server shares the trainer's cores, fewer buckets win.
    """
    num_tensors = num_bytes = 0
    _on_all(admins, lambda a: a.collective_rpc("igrpo_stream_begin"))
    try:
        with ThreadPoolExecutor(max_workers=1) as sender:
            pending = None
            for i, bucket in enumerate(buckets):
                tensors = {name: t.detach().contiguous().cpu() for name, t in bucket}
                item = encode(i, tensors)
                num_tensors += len(tensors)
                num_bytes += sum(t.numel() * t.element_size() for t in tensors.values())
                if pending is not None:
                    pending.result()
                pending = sender.submit(_on_all, admins, lambda a, item=item: a.collective_rpc(method, [item]))
            if pending is not None:
                pending.result()
    except BaseException:
        try:  # end the workers' load threads; the servers stay paused
            _on_all(admins, lambda a: a.collective_rpc("igrpo_stream_end"))
        except RefitError as e:
            log.warning("ending the weight stream after a failure also failed: %s", e)
        raise
    results = _on_all(admins, lambda a: a.collective_rpc("igrpo_stream_end"))
    for per_server in results:
        for n in per_server:
            if int(n) != num_tensors:
                raise RefitError(f"a worker loaded {n} tensors, the trainer sent {num_tensors}")
    return num_tensors, num_bytes


# rollout.refit_transport -> the class that moves a refit's buckets: (cfg, admins) -> transport.
TRANSPORTS: Registry[type[Transport]] = Registry("rollout.refit_transport")


@TRANSPORTS.register("disk")
class DiskTransport:
    """Safetensors files in ``rollout.refit_dir``; each server reads them itself."""

    def __init__(self, cfg: RolloutConfig, admins: Sequence[ServerAdmin]) -> None:
        if not cfg.refit_dir:
            raise ConfigError("rollout.refit_transport=disk needs rollout.refit_dir: a folder on a "
                              "filesystem that the trainer's rank 0 and every rollout server can read")
        self.root, self.admins = cfg.refit_dir, admins
        self.folder: Optional[str] = None
        self.num_tensors = 0

    def load(self, buckets: Iterable[Bucket], version: int) -> int:
        from safetensors.torch import save_file

        final = os.path.join(self.root, f"v{version:08d}")
        tmp = final + ".partial"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)

        def write(i: int, tensors: dict) -> str:
            path = os.path.join(tmp, f"bucket-{i:05d}.safetensors")
            save_file(tensors, path)  # closed before the servers hear of it
            return path

        self.num_tensors, nbytes = _stream(self.admins, "igrpo_stream_file", buckets, write)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)  # only complete versions carry the final name
        self.folder = final
        return nbytes

    def cleanup(self) -> None:
        """Delete the folders of older versions (the current one stays for inspection/restarts)."""
        for name in os.listdir(self.root):
            path = os.path.join(self.root, name)
            if name.startswith("v") and path != self.folder and os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)


@TRANSPORTS.register("http")
class HttpTransport:
    """Base64 safetensors buckets in ``/collective_rpc`` bodies."""

    def __init__(self, cfg: RolloutConfig, admins: Sequence[ServerAdmin]) -> None:
        self.admins = admins
        self.num_tensors = 0

    def load(self, buckets: Iterable[Bucket], version: int) -> int:
        from safetensors.torch import save

        self.num_tensors, nbytes = _stream(self.admins, "igrpo_stream_bytes", buckets,
                                           lambda i, tensors: base64.b64encode(save(tensors)).decode("ascii"))
        return nbytes

    def cleanup(self) -> None:
        pass


@TRANSPORTS.register("nccl")
class NcclTransport:
    """vLLM's NCCL weight-transfer engine (GPU only; untested on this CPU-only machine).

    The sender (trainer rank 0) is NCCL rank 0 of a group it shares with every worker of every
    server (``rank_offset`` = 1 + the workers of the servers before it). Joining that group needs
    vLLM's ``PyNcclCommunicator``, so this transport, and only it, imports vLLM in the trainer.
    Weights are loaded while received.
    """

    def __init__(self, cfg: RolloutConfig, admins: Sequence[ServerAdmin]) -> None:
        if not cfg.nccl_master_address:
            raise ConfigError("rollout.refit_transport=nccl needs rollout.nccl_master_address: an "
                              "address of the trainer's rank-0 node that the rollout servers can reach")
        self.cfg, self.admins = cfg, admins
        self.group = None
        self.num_tensors = 0

    def _connect(self) -> None:
        try:
            from vllm.distributed.weight_transfer.nccl_common import trainer_init
        except ImportError as e:
            raise ImportError("rollout.refit_transport=nccl needs vLLM in the trainer's environment "
                              "(pip install igrpo-megatron[gpu])") from e
        sizes = [a.request("GET", "/get_world_size", params={"include_dp": "false"})["world_size"]
                 for a in self.admins]
        world = 1 + sum(sizes)
        offsets = [1 + sum(sizes[:i]) for i in range(len(sizes))]
        rendezvous = {"master_address": self.cfg.nccl_master_address,
                      "master_port": self.cfg.nccl_master_port, "world_size": world}
        with ThreadPoolExecutor(max_workers=len(self.admins)) as pool:
            # The workers block in init until the trainer joins: start them first, then join.
            futures = [pool.submit(a.request, "POST", "/init_weight_transfer_engine",
                                   {"init_info": {**rendezvous, "rank_offset": off, "packed": False}})
                       for a, off in zip(self.admins, offsets)]
            self.group = trainer_init(rendezvous, rank=0)
            for f in futures:
                f.result()

    def load(self, buckets: Iterable[Bucket], version: int) -> int:
        import torch

        if self.group is None:
            self._connect()
        _on_all(self.admins, lambda a: a.request("POST", "/start_weight_update"))
        nbytes = self.num_tensors = 0
        stream = torch.cuda.current_stream()
        for bucket in buckets:
            tensors = [(n, t.detach().contiguous().cuda()) for n, t in bucket]
            info = {"names": [n for n, _ in tensors],
                    "dtype_names": [str(t.dtype).removeprefix("torch.") for _, t in tensors],
                    "shapes": [list(t.shape) for _, t in tensors]}
            with ThreadPoolExecutor(max_workers=len(self.admins)) as pool:
                # The workers' /update_weights blocks in the matching broadcasts.
                futures = [pool.submit(a.request, "POST", "/update_weights", {"update_info": info})
                           for a in self.admins]
                for _, t in tensors:
                    self.group.broadcast(t, src=0, stream=stream)
                for f in futures:
                    f.result()
            nbytes += sum(t.numel() * t.element_size() for _, t in tensors)
            self.num_tensors += len(tensors)
        _on_all(self.admins, lambda a: a.request("POST", "/finish_weight_update", {"weight_version": str(version)}))
        return nbytes

    def cleanup(self) -> None:
        pass



class Refitter:
    """Updates the weights of all rollout servers; call :meth:`update` on every trainer rank.

    Only the sender (global rank 0) talks to the servers and needs their URLs and key; on the
    other ranks :meth:`update` drains the collective export. ``client``, if given, learns each new
    version (``client.expected_version``) so that it refuses or counts samples generated by older
    weights (``rollout.stale_policy``).
    """

    def __init__(self, cfg: RolloutConfig, server_urls: Sequence[str] = (), api_key: str = "",
                 client: Optional["RolloutClient"] = None, is_sender: Optional[bool] = None) -> None:
        self.is_sender = _is_sender() if is_sender is None else is_sender
        if self.is_sender and not server_urls:
            raise ConfigError("Refitter needs at least one rollout server URL (rollout.server_urls)")
        self.cfg = cfg
        self.admins = [ServerAdmin(u, api_key) for u in server_urls]
        self.client = client
        self.transport: Optional[Transport] = TRANSPORTS[cfg.refit_transport](cfg, self.admins) if self.is_sender else None

    def update(self, buckets: Iterable[Bucket], version: int) -> Optional[RefitStats]:
        """Load ``buckets`` into every server as weight ``version`` (an int > the current one).

        On non-sender ranks this only drains ``buckets`` (the export is a collective) and
        returns None.
        """
        if not self.is_sender:
            drain(buckets)
            return None
        t0 = time.perf_counter()
        _on_all(self.admins, lambda a: a.pause(self.cfg.refit_pause_mode))
        t_paused = time.perf_counter()
        nbytes = self.transport.load(buckets, version)
        t_loaded = time.perf_counter()
        _on_all(self.admins, lambda a: a.reset_prefix_cache())
        _on_all(self.admins, lambda a: a.set_weight_version(version))
        _on_all(self.admins, lambda a: a.resume())
        t_end = time.perf_counter()
        self.transport.cleanup()
        if self.client is not None:
            self.client.expected_version = version
        stats = RefitStats(version, self.transport.num_tensors, nbytes, t_paused - t0, t_loaded - t_paused,
                           t_end - t0)
        log.info("refit v%d: %d tensors, %.1f MB, pause %.2f s, load %.2f s, total %.2f s", version,
                 stats.num_tensors, nbytes / 1e6, stats.pause_s, stats.load_s, stats.total_s)
        return stats
