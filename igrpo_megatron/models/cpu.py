"""Let megatron-core run on a machine without a GPU (tests, the CPU demo).

megatron-core assumes CUDA in a handful of places: tensors created with ``device="cuda"`` or
``device=torch.cuda.current_device()``, ``.cuda()`` calls, ``torch.cuda.synchronize()`` in the
pipeline p2p path, CUDA RNG state for the tensor-parallel RNG tracker, and ``Tensor.type()``
checks that insist on ``torch.cuda.*Tensor`` names (distributed optimizer, grad clipping).
Everything else (GPTModel with the local spec, schedules, DDP, optimizer, dist_checkpointing)
works on CPU tensors with the gloo backend once those are redirected.

The redirection is a process-wide :class:`~torch.overrides.TorchFunctionMode` plus a few patches
on ``torch.cuda`` and megatron's RNG helpers. :func:`enable_cpu_support` installs them once, and
only when ``torch.cuda.is_available()`` is False, so the same code runs unchanged on GPU nodes.
This is the only module of the project that knows about these adjustments; the Mamba layers'
stand-ins for a machine without ``mamba_ssm`` live beside it in
:mod:`~igrpo_megatron.models.cpu_mamba` and are re-exported here.

Two limits of a function mode: it is thread-local (megatron code must run on the thread that
enabled it), and torch pops it while it handles a call, so Python code run *inside*
``torch.autograd.backward`` (activation recompute) would not see it. Megatron's schedule calls the
autograd engine directly when ``deallocate_pipeline_outputs`` is on, which the provider sets.
"""
from __future__ import annotations

import multiprocessing

import torch
from torch.overrides import TorchFunctionMode

from igrpo_megatron.models.cpu_mamba import (enable_mamba_fallbacks, fused_mamba_path_available,  # noqa: F401
                                              local_mamba_stack_spec, mamba_ssm_available)

_MODE: "_CudaToCpuMode | None" = None


def _cpu_device(device):
    """Map any CUDA device spelling (``"cuda"``, ``"cuda:1"``, ``torch.device("cuda")``, ``0``) to CPU."""
    if isinstance(device, bool):
        return device
    if isinstance(device, int):
        return torch.device("cpu")
    if isinstance(device, str) and device.startswith("cuda"):
        return torch.device("cpu")
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    return device


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA placements to CPU for every torch call made while the mode is active."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "device" in kwargs:
            kwargs = {**kwargs, "device": _cpu_device(kwargs["device"])}
        name = getattr(func, "__name__", "")
        if name == "cuda":  # Tensor.cuda() / Module parameters: stay where they are
            return args[0]
        if name == "to":
            args = tuple(_cpu_device(a) if isinstance(a, (str, int, torch.device)) else a for a in args)
        elif name == "type" and len(args) == 1 and not kwargs:
            # Tensor.type() with no argument: megatron asserts on "torch.cuda.FloatTensor" & co.
            type_name = func(*args)
            if type_name.startswith("torch.") and not type_name.startswith("torch.cuda."):
                return "torch.cuda." + type_name[len("torch."):]
            return type_name
        return func(*args, **kwargs)


def _patch_torch_cuda() -> None:
    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda *args, **kwargs: None
    torch.cuda.device_count = lambda: 0
    # Megatron's TP RNG tracker forks CUDA generator state; on CPU the CPU generator plays its part,
    # so model_parallel_cuda_manual_seed() and dropout under TP behave as on GPU.
    torch.cuda.get_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    torch.cuda.set_rng_state = lambda state, *args, **kwargs: torch.set_rng_state(state)
    torch.cuda.manual_seed = torch.manual_seed

    from megatron.core.tensor_parallel import random as mcore_random

    mcore_random._get_cuda_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    mcore_random._set_cuda_rng_state = lambda state, *args, **kwargs: torch.set_rng_state(state)


def _speed_up_checkpoint_writer() -> None:
    """dist_checkpointing creates its result queue with a *spawn* Manager, which starts a fresh
    Python (~3 s per save on a small CPU machine). A fork-context Manager queue serves the same
    purpose; setting it up front makes a tiny checkpoint save take ~0.2 s. The manager process
    dies with its rank (a SIGKILLed rank left it behind, ~400 MB)."""
    from multiprocessing.managers import SyncManager

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    from igrpo_megatron.lifetime import die_with_parent

    if filesystem_async._results_queue is None:
        manager = SyncManager(ctx=multiprocessing.get_context("fork"))
        manager.start(initializer=die_with_parent)
        filesystem_async._results_queue = manager.Queue()


def enable_cpu_support(fast_checkpoint_writer: bool = False) -> bool:
    """Make megatron-core usable without a GPU, for the rest of this process.

    Idempotent; a no-op (returns False) when CUDA is available. Call it once at start-up, before
    building models. ``fast_checkpoint_writer`` also installs the fork-based result queue for
    dist_checkpointing saves (forks a small manager process, so only ask for it when saving).
    """
    global _MODE
    if torch.cuda.is_available():
        return False
    if _MODE is None:
        _patch_torch_cuda()
        _MODE = _CudaToCpuMode()
        _MODE.__enter__()  # stays pushed on the torch-function mode stack for the whole process
    if fast_checkpoint_writer:
        _speed_up_checkpoint_writer()
    return True


def cpu_support_enabled() -> bool:
    return _MODE is not None
