"""Push the trainer's new weights into the rollout servers ("refit"), behind one interface.

Input: an iterator of buckets, each a list of ``(hf_name, full_tensor)``, as
``igrpo_megatron.weights.export_hf_weights`` yields them on global rank 0 (it is a collective, so
every rank iterates it; only the sender gets non-empty buckets and talks to the servers).

One update, on every server::

    transport.stage(buckets)        # move bytes to the servers; generation keeps running
    POST /pause?mode=wait           # rollout.refit_pause_mode
    transport.apply()               # /collective_rpc -> worker reload_weights
    POST /reset_prefix_cache        # cached KV blocks were computed by the old weights
    POST /update_weight_version     # the label vLLM attaches to every token it generates next
    POST /resume

Weight-version labelling. vLLM attaches the engine's current version to each step's output
tokens and ``/inference/v1/generate`` returns them as spans, which the client turns into
``Sample.weight_version``. The version is set while the engine is paused and before resume, so:
with ``pause_mode=wait`` a request in flight finishes on the old weights under the old label,
and a request that arrived during the pause waits and runs entirely on the new weights under
the new label; with ``keep`` a frozen request continues on the new weights and its spans show two
versions (the client labels it with the older one, so it counts as stale); with ``abort`` it is
cancelled and the client retries it. Nothing is labelled from the client's clock.

Transports (``rollout.refit_transport``):

* ``disk``: the sender writes the buckets as safetensors into ``rollout.refit_dir`` (a filesystem
  every server can read), then each server loads the folder. Scales to any model size.
* ``http``: each bucket travels base64-encoded in a ``/collective_rpc`` body and is staged in the
  workers' memory, then committed. No shared filesystem needed; meant for small models.
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
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Sequence

from igrpo_megatron.config import ConfigError, RolloutConfig
from igrpo_megatron.rollout.admin import ServerAdmin

if TYPE_CHECKING:
    import torch

    from igrpo_megatron.rollout.client import RolloutClient

Bucket = Sequence[tuple[str, "torch.Tensor"]]
log = logging.getLogger(__name__)


class RefitError(RuntimeError):
    """A weight update failed on a server; the server stays paused."""


@dataclass
class RefitStats:
    version: int
    num_tensors: int
    num_bytes: int
    stage_s: float  # export + moving the bytes (servers keep generating)
    pause_s: float  # servers paused: load, cache reset, version, resume
    total_s: float


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


def _check_counts(results: list, expected: int, what: str) -> None:
    for per_server in results:
        for n in per_server:
            if int(n) != expected:
                raise RefitError(f"{what}: a worker loaded {n} tensors, the trainer sent {expected}")


class DiskTransport:
    """Safetensors files in ``rollout.refit_dir``; each server reads them itself."""

    def __init__(self, cfg: RolloutConfig, admins: Sequence[ServerAdmin]) -> None:
        if not cfg.refit_dir:
            raise ConfigError("rollout.refit_transport=disk needs rollout.refit_dir: a folder on a "
                              "filesystem that the trainer's rank 0 and every rollout server can read")
        self.root, self.admins = cfg.refit_dir, admins
        self.folder: Optional[str] = None
        self.num_tensors = 0

    def stage(self, buckets: Iterable[Bucket], version: int) -> int:
        from safetensors.torch import save_file

        final = os.path.join(self.root, f"v{version:08d}")
        tmp = final + ".partial"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        nbytes = self.num_tensors = 0
        for i, bucket in enumerate(buckets):
            tensors = {name: t.detach().contiguous().cpu() for name, t in bucket}
            save_file(tensors, os.path.join(tmp, f"bucket-{i:05d}.safetensors"))
            self.num_tensors += len(tensors)
            nbytes += sum(t.numel() * t.element_size() for t in tensors.values())
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)  # a server never sees a half-written version
        self.folder = final
        return nbytes

    def apply(self) -> None:
        results = _on_all(self.admins, lambda a: a.collective_rpc("igrpo_load_safetensors", [self.folder]))
        _check_counts(results, self.num_tensors, f"loading {self.folder}")

    def cleanup(self) -> None:
        """Delete the folders of older versions (the current one stays for inspection/restarts)."""
        for name in os.listdir(self.root):
            path = os.path.join(self.root, name)
            if name.startswith("v") and path != self.folder and os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)


class HttpTransport:
    """Base64 safetensors buckets in ``/collective_rpc`` bodies, staged in worker memory."""

    def __init__(self, cfg: RolloutConfig, admins: Sequence[ServerAdmin]) -> None:
        self.admins = admins
        self.num_tensors = 0

    def stage(self, buckets: Iterable[Bucket], version: int) -> int:
        from safetensors.torch import save

        nbytes = self.num_tensors = 0
        _on_all(self.admins, lambda a: a.collective_rpc("igrpo_discard_staged"))
        for bucket in buckets:
            tensors = {name: t.detach().contiguous().cpu() for name, t in bucket}
            payload = base64.b64encode(save(tensors)).decode("ascii")
            results = _on_all(self.admins, lambda a: a.collective_rpc("igrpo_stage_safetensors_b64", [payload]))
            _check_counts(results, len(tensors), "staging a bucket")
            self.num_tensors += len(tensors)
            nbytes += sum(t.numel() * t.element_size() for t in tensors.values())
        return nbytes

    def apply(self) -> None:
        results = _on_all(self.admins, lambda a: a.collective_rpc("igrpo_commit_staged"))
        _check_counts(results, self.num_tensors, "committing staged buckets")

    def cleanup(self) -> None:
        pass


class NcclTransport:
    """vLLM's NCCL weight-transfer engine (GPU only; untested on this CPU-only machine).

    The sender (trainer rank 0) is NCCL rank 0 of a group it shares with every worker of every
    server (``rank_offset`` = 1 + the workers of the servers before it). Joining that group needs
    vLLM's ``PyNcclCommunicator``, so this transport, and only it, imports vLLM in the trainer.
    Weights are loaded while received, hence the servers are paused before staging.
    """

    pause_before_stage = True

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

    def stage(self, buckets: Iterable[Bucket], version: int) -> int:
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

    def apply(self) -> None:
        pass  # loaded while received

    def cleanup(self) -> None:
        pass


TRANSPORTS = {"disk": DiskTransport, "http": HttpTransport, "nccl": NcclTransport}


class Refitter:
    """Updates the weights of all rollout servers; call :meth:`update` on every trainer rank.

    ``client``, if given, learns each new version (``client.expected_version``) so that it
    refuses or counts samples generated by older weights (``rollout.stale_policy``).
    """

    def __init__(self, cfg: RolloutConfig, server_urls: Sequence[str], api_key: str,
                 client: Optional["RolloutClient"] = None, is_sender: Optional[bool] = None) -> None:
        if not server_urls:
            raise ConfigError("Refitter needs at least one rollout server URL (rollout.server_urls)")
        self.cfg = cfg
        self.admins = [ServerAdmin(u, api_key) for u in server_urls]
        self.client = client
        self.is_sender = _is_sender() if is_sender is None else is_sender
        self.transport = TRANSPORTS[cfg.refit_transport](cfg, self.admins) if self.is_sender else None

    def update(self, buckets: Iterable[Bucket], version: int) -> Optional[RefitStats]:
        """Load ``buckets`` into every server as weight ``version`` (an int > the current one).

        On non-sender ranks this only drains ``buckets`` (the export is a collective) and
        returns None.
        """
        if not self.is_sender:
            for _ in buckets:
                pass
            return None
        t0 = t_pause = time.perf_counter()
        early_pause = getattr(self.transport, "pause_before_stage", False)
        if early_pause:
            self._pause()
        nbytes = self.transport.stage(buckets, version)
        t_staged = time.perf_counter()
        if not early_pause:
            t_pause = t_staged
            self._pause()
        self.transport.apply()
        _on_all(self.admins, lambda a: a.reset_prefix_cache())
        _on_all(self.admins, lambda a: a.set_weight_version(version))
        _on_all(self.admins, lambda a: a.resume())
        t_end = time.perf_counter()
        self.transport.cleanup()
        if self.client is not None:
            self.client.expected_version = version
        stats = RefitStats(version, self.transport.num_tensors, nbytes, t_staged - t0,
                           t_end - t_pause, t_end - t0)
        log.info("refit v%d: %d tensors, %.1f MB, stage %.2f s, paused %.2f s", version,
                 stats.num_tensors, nbytes / 1e6, stats.stage_s, stats.pause_s)
        return stats

    def _pause(self) -> None:
        _on_all(self.admins, lambda a: a.pause(self.cfg.refit_pause_mode))
