"""Process groups and Megatron's model-parallel state for one layout (TP x PP x DP).

``torchrun`` (or srun) provides RANK / WORLD_SIZE / LOCAL_RANK; a plain ``python`` process with
none of them runs as a world of one, so single-process tools and tests need no launcher.
CPU machines use gloo (with :func:`~igrpo_megatron.models.cpu.enable_cpu_support`), GPU nodes NCCL.
:func:`destroy_parallel` tears down the Megatron groups but keeps the process group, so one
launch can check several layouts in turn.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from igrpo_megatron.config import ParallelConfig
from igrpo_megatron.models.cpu import enable_cpu_support


@dataclass(frozen=True)
class ParallelInfo:
    """Where this rank sits in the layout."""

    rank: int
    world_size: int
    tp_rank: int
    tp_size: int
    pp_rank: int
    pp_size: int
    dp_rank: int
    dp_size: int
    device: torch.device

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_process_group() -> None:
    if dist.is_initialized():
        return
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if on_gpu else "gloo"
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend)
    else:  # a plain process: a world of one on a private port
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)


def initialize_parallel(parallel_cfg: ParallelConfig, seed: int = 1234) -> ParallelInfo:
    """Initialise torch.distributed (if needed) and Megatron's TP/PP/DP groups, then seed the RNGs.

    Any previous Megatron layout in this process is destroyed first. The seed is applied the way
    Megatron-LM does it: one global seed plus the TP-rank-dependent tracker seed, so dropout and
    initialisation are reproducible per layout.
    """
    enable_cpu_support()
    _init_process_group()
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    parallel_cfg.validate()
    parallel_cfg.check_world_size(dist.get_world_size())
    tp, pp = parallel_cfg.tp, parallel_cfg.pp
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)
    return parallel_info()


def parallel_info() -> ParallelInfo:
    """The current layout (after :func:`initialize_parallel`)."""
    from megatron.core import parallel_state as ps

    return ParallelInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        tp_rank=ps.get_tensor_model_parallel_rank(),
        tp_size=ps.get_tensor_model_parallel_world_size(),
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        pp_size=ps.get_pipeline_model_parallel_world_size(),
        dp_rank=ps.get_data_parallel_rank(),
        dp_size=ps.get_data_parallel_world_size(),
        device=current_device(),
    )


def current_device() -> torch.device:
    """Where this rank's tensors live: its GPU, or the CPU on machines without one."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def destroy_parallel(destroy_process_group: bool = False) -> None:
    """Drop Megatron's groups (and, if asked, the torch.distributed process group)."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if destroy_process_group and dist.is_initialized():
        dist.destroy_process_group()
