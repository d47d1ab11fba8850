"""Streaming export: full HF-named tensors from a live Megatron model at any TP x PP layout.

Used by the refit (new weights to the rollout servers every iteration) and by ``igrpo-convert
to-hf``. Tensors come out one at a time (or in buckets of bounded size), so the exporting rank
holds about one bucket beyond the model itself, never a second copy of the whole model.

Collective contract -- read before calling:

* **Every rank** of the job calls :func:`export_hf_weights` / :func:`iter_hf_weights` with the same
  arguments and **exhausts the iterator**; the collectives run while it is iterated. Ranks other
  than the exporter get an iterator that yields nothing (it still has to be run to its end:
  :func:`drain`).
* The exporter is global rank 0. Only it receives tensors: everything it yields is on rank 0's
  device (the model's), in the model's dtype unless ``dtype`` is given.
* Inside a pipeline stage, the ranks of the data-parallel-0 / context-parallel-0 replica
  all-gather each TP-split parameter in their TP group; the stage's TP-rank-0 converts it to HF
  tensors and sends them point to point to rank 0 (a manifest of names/shapes first, then the
  tensors). Other data-parallel replicas take no part. Stages are drained in order 0, 1, ...
* Yielded tensors may alias model parameters (TP=1, plain copies): consume a bucket before the
  next optimizer step.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Optional

import torch
import torch.distributed as dist

from igrpo_megatron.weights.mapping import WeightMap, global_parameters, unshard


def bucketize(pairs: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group a (name, tensor) stream into lists of at most ``bucket_bytes`` (a larger tensor goes alone)."""
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in pairs:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


def drain(collective: Iterable) -> None:
    """Run a collective iterator to its end, dropping what it yields: what a rank that takes part
    in the gathers and sends, but receives nothing, does with :func:`export_hf_weights`."""
    for _ in collective:
        pass


def export_hf_weights(model_chunks, hf_cfg, bucket_bytes: int = 512 << 20, *, dtype: Optional[torch.dtype] = None,
                      weight_map: Optional[WeightMap] = None,
                      tied_head: bool = False) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Buckets of ``(hf_name, full tensor)`` on global rank 0; see the module docstring for the contract.

    ``tied_head`` (the refit) also sends a tied embedding as ``lm_head.weight``: vLLM's CPU worker
    packs its own copy of the output layer at load, which a reload without that name leaves at the
    old weights (measured on the real model: Megatron-vs-vLLM logprobs 5e-6 before the first update,
    1.6e-2 after it)."""
    wmap = weight_map or WeightMap(hf_cfg)
    tensors = iter_hf_weights(model_chunks, hf_cfg, dtype=dtype, weight_map=wmap)
    if tied_head and wmap.tied:
        tensors = _with_tied_head(tensors, wmap)
    return bucketize(tensors, bucket_bytes)


def _with_tied_head(tensors: Iterator[tuple[str, torch.Tensor]], wmap: WeightMap) -> Iterator[tuple[str, torch.Tensor]]:
    for name, tensor in tensors:
        yield name, tensor
        if name == wmap.embedding_hf:  # a copy: safetensors refuses two names on one storage
            yield wmap.output_hf, tensor.clone()


def iter_hf_weights(model_chunks, hf_cfg, *, dtype: Optional[torch.dtype] = None,
                    weight_map: Optional[WeightMap] = None) -> Iterator[tuple[str, torch.Tensor]]:
    """``(hf_name, full tensor)`` one at a time on global rank 0; see the module docstring."""
    from megatron.core import parallel_state as ps

    wmap = weight_map or WeightMap(hf_cfg)
    if ps.get_data_parallel_rank() != 0 or ps.get_context_parallel_rank() != 0:
        return
    params = [(n, p) for n, p in global_parameters(model_chunks) if wmap.exported(n)]
    pp_rank, pp_size = ps.get_pipeline_model_parallel_rank(), ps.get_pipeline_model_parallel_world_size()
    tp_rank = ps.get_tensor_model_parallel_rank()
    stage_ranks = dist.get_process_group_ranks(ps.get_pipeline_model_parallel_group())
    exporter = stage_ranks[0]
    if tp_rank != 0:  # a gather participant only
        drain(_hf_tensors(params, wmap, dtype))
        return
    assert pp_rank != 0 or exporter == dist.get_rank() == 0, "rank 0 must be stage 0, TP rank 0, DP rank 0"
    if pp_rank == 0:
        yield from _hf_tensors(params, wmap, dtype)
        for stage in range(1, pp_size):
            yield from _receive(stage_ranks[stage], params[0][1].device if params else torch.device("cpu"))
    else:
        _send(params, wmap, dtype, exporter)


def _hf_tensors(params, wmap: WeightMap, dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """This stage's parameters as HF tensors on TP rank 0 (other TP ranks only join the gathers)."""
    from megatron.core import parallel_state as ps

    group = ps.get_tensor_model_parallel_group()
    tp_size, tp_rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    for name, param in params:
        split = wmap.split(name)
        local = param.detach()
        if split.dim is None or tp_size == 1:
            full = local
        else:
            pieces = [torch.empty_like(local) for _ in range(tp_size)]
            dist.all_gather(pieces, local.contiguous(), group=group)
            full = unshard(pieces, split)
            del pieces
        if tp_rank == 0:
            for hf_name, tensor in wmap.to_hf(name, full):
                yield hf_name, tensor if dtype is None else tensor.to(dtype)


def _manifest(params, wmap: WeightMap, dtype) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """Names, shapes and dtypes this stage will send, computed on meta tensors (no data moved)."""
    from megatron.core import parallel_state as ps

    tp_size = ps.get_tensor_model_parallel_world_size()
    out = []
    for name, param in params:
        shape = list(param.shape)
        split = wmap.split(name)
        if split.dim is not None:
            shape[split.dim] *= tp_size
        meta = torch.empty(shape, dtype=param.dtype, device="meta")
        out += [(hf_name, tuple(t.shape), dtype or t.dtype) for hf_name, t in wmap.to_hf(name, meta)]
    return out


def _send(params, wmap: WeightMap, dtype, dst: int) -> None:
    dist.send_object_list([_manifest(params, wmap, dtype)], dst=dst)
    for _, tensor in _hf_tensors(params, wmap, dtype):
        dist.send(tensor, dst=dst)


def _receive(src: int, device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
    box: list = [None]
    dist.recv_object_list(box, src=src)
    for hf_name, shape, dtype in box[0]:
        tensor = torch.empty(shape, dtype=dtype, device=device)
        dist.recv(tensor, src=src)
        yield hf_name, tensor
