"""Save and resume a training run with ``megatron.core.dist_checkpointing``.

One checkpoint folder (see :mod:`igrpo_megatron.checkpoint.directory` for the layout) holds:

- model weights and optimizer state as one Megatron sharded state dict (``torch_dist`` format:
  ``*.distcp`` shards, ``.metadata``, ``common.pt``, ``metadata.json``). Weights are stored as
  global tensors, so a checkpoint written at one TP x PP layout loads at any other;
- ``meta.json``: step, the layout it was written at, the LR scheduler state and the trainer's
  ``extra_state`` (data-iterator position and anything else JSON-serialisable);
- ``rng/rank_XXXXX.safetensors``: every rank's generator states (:mod:`.rng`);
- ``config.yaml``: the run config, when given.

Optimizer state and layouts. The distributed optimizer is saved in Megatron's
``fully_reshardable`` format (each Adam moment stored like the parameter it belongs to; not
Megatron-LM's default ``dp_reshardable``, which only reloads at the same TP x PP), and the plain
optimizer's state is sharded like the parameters too, so optimizer state follows the weights to any
TP / PP / DP layout. megatron-core cannot convert optimizer state between the distributed and the
plain optimizer: :func:`load_checkpoint` refuses that (and a checkpoint saved without optimizer)
up front and points at ``load_optimizer=False`` (``train.load_optimizer``).

Loading executes nothing from the checkpoint (:mod:`.safe_unpickle`) and loads nothing damaged:
every file's checksum is recorded in ``meta.json`` at save and checked before Megatron reads a
byte (:mod:`.integrity`). The megatron-core 0.16.1 work-arounds of the optimizer state live in
:mod:`.mcore_compat`.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch.distributed as dist
import yaml

from igrpo_megatron.checkpoint import integrity
from igrpo_megatron.checkpoint.directory import (
    META_FILE,
    TMP_SUFFIX,
    CheckpointError,
    commit,
    find_latest,
    iter_dir_name,
    prepare_tmp_dir,
    prune,
    step_of,
)
from igrpo_megatron.checkpoint.mcore_compat import load_optimizer_state, prime_empty_adam_state
from igrpo_megatron.checkpoint.rng import load_rng_state, rng_file, save_rng_state
from igrpo_megatron.checkpoint.safe_unpickle import check_common_file, read_dcp_metadata, safe_unpickling

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_FILE = "config.yaml"
# The DistributedOptimizer format that stores state in parameter space (reshardable over TP/PP/DP).
DISTRIBUTED_OPTIM_FORMAT = "fully_reshardable"
# Test hook: at the named point rank 0 SIGKILLs its process group, i.e. itself and the helper
# processes dist_checkpointing's writer forks (simulates a node dying in the middle of a save).
FAULT_ENV = "IGRPO_CKPT_FAULT"


@dataclass(frozen=True)
class LoadedCheckpoint:
    """What :func:`load_checkpoint` restored besides the objects it loaded in place."""

    path: str
    step: int
    extra_state: dict
    config: Optional[dict]  # the run config saved with the checkpoint, as a plain dict
    optimizer_loaded: bool
    rng_restored: bool  # False when the layout changed (RNG streams are per rank) or load_rng=False


# ------------------------------------------------------------------------------------ helpers


def _unwrap_ddp(model):
    """Megatron DDP adds a ``module.`` level; checkpoints use the inner names so they do not
    depend on whether the model was wrapped for training (eval, conversion tools load them bare)."""
    from megatron.core.distributed.data_parallel_base import _BaseDataParallel

    while isinstance(model, _BaseDataParallel):
        model = model.module
    return model


def _single_chunk(model_chunks: Sequence) -> Any:
    chunks = list(model_chunks) if isinstance(model_chunks, (list, tuple)) else [model_chunks]
    if len(chunks) != 1:
        raise CheckpointError(
            f"got {len(chunks)} model chunks; virtual pipeline stages are not supported by "
            f"igrpo_megatron.checkpoint (pass the one model of this pipeline stage)"
        )
    return _unwrap_ddp(chunks[0])


def _is_distributed_optimizer(optimizer) -> bool:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    inner = getattr(optimizer, "chained_optimizers", [optimizer])
    return any(isinstance(o, DistributedOptimizer) for o in inner)


def _layout(optimizer) -> dict:
    from megatron.core import parallel_state as ps

    return {
        "world_size": dist.get_world_size(),
        "tp": ps.get_tensor_model_parallel_world_size(),
        "pp": ps.get_pipeline_model_parallel_world_size(),
        "dp": ps.get_data_parallel_world_size(with_context_parallel=True),
        "distributed_optimizer": optimizer is not None and _is_distributed_optimizer(optimizer),
    }


def _sharded_state_dict(model, optimizer, is_loading: bool) -> dict:
    state = {"model": model.sharded_state_dict()}
    if optimizer is not None:
        prime_empty_adam_state(optimizer)
        state["optimizer"] = optimizer.sharded_state_dict(
            state["model"],
            is_loading=is_loading,
            metadata={"distrib_optim_sharding_type": DISTRIBUTED_OPTIM_FORMAT, "chained_optim_avoid_prefix": True},
        )
    return state


def _save_strategy():
    """Megatron's torch_dist writer, with the writing spread over the DP replicas (each rank
    writes a share of the replicated tensors instead of DP rank 0 writing all of them)."""
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy
    from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelSaveStrategyWrapper

    from igrpo_megatron.models.cpu import cpu_support_enabled, enable_cpu_support

    if cpu_support_enabled():  # a fork-based result queue: saves in ~0.2 s instead of ~3 s on CPU
        enable_cpu_support(fast_checkpoint_writer=True)
    return FullyParallelSaveStrategyWrapper(get_default_save_sharded_strategy(),
                                            ps.get_data_parallel_group(with_context_parallel=True))


def _fault_point(name: str) -> None:
    if os.environ.get(FAULT_ENV) == name and dist.get_rank() == 0:
        logger.warning("%s=%s: killing rank 0 on purpose", FAULT_ENV, name)
        os.killpg(os.getpgid(0), signal.SIGKILL)


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True, allow_nan=True)
        f.flush()
        os.fsync(f.fileno())


def _checksum_own_files(tmp: str, rank: int) -> dict:
    """Each rank sums the files it wrote (still in its page cache); rank 0 gets every sum and adds
    the files no rank claimed (Megatron's common files, config.yaml). Collective."""
    own = integrity.checksums(tmp, integrity.files_written_by(rank, integrity.all_files(tmp)))
    gathered = [None] * dist.get_world_size() if rank == 0 else None
    dist.gather_object(own, gathered, dst=0)
    if rank != 0:
        return {}
    sums = {name: digest for part in gathered for name, digest in part.items()}
    sums.update(integrity.checksums(tmp, [n for n in integrity.all_files(tmp) if n not in sums]))
    return sums


def _verify_checksums(ckpt_dir: str, meta: dict) -> None:
    """Check every recorded file, the ranks sharing them round-robin (collective); raise on all
    ranks if any is damaged."""
    recorded = meta.get("checksums")
    if recorded is None:
        if dist.get_rank() == 0:
            logger.warning("%s records no checksums (saved by an older igrpo_megatron); its files are not verified",
                           ckpt_dir)
        return
    names = sorted(recorded.get("files", {}))[dist.get_rank()::dist.get_world_size()]
    problems = [None] * dist.get_world_size()
    dist.all_gather_object(problems, integrity.mismatches(ckpt_dir, recorded, names))
    integrity.raise_if_damaged(ckpt_dir, sorted(p for part in problems for p in part))


def _write(tmp: str, step: int, model, optimizer, scheduler, extra_state: dict, config) -> None:
    """Everything of checkpoint ``step`` into its ``.tmp`` folder (collective)."""
    from megatron.core import dist_checkpointing

    rank = dist.get_rank()
    state = _sharded_state_dict(model, optimizer, is_loading=False)
    dist_checkpointing.save(state, tmp, sharded_strategy=_save_strategy())
    _fault_point("after_shards")
    save_rng_state(tmp, rank)
    if rank == 0 and config is not None:
        from igrpo_megatron.config import dump_yaml

        with open(os.path.join(tmp, CONFIG_FILE), "w", encoding="utf-8") as f:
            f.write(dump_yaml(config))
    sums = _checksum_own_files(tmp, rank)
    if rank == 0:
        layout = _layout(optimizer)
        meta = {
            "format_version": FORMAT_VERSION,
            "step": step,
            "layout": layout,
            "optimizer_format": None if optimizer is None else
            DISTRIBUTED_OPTIM_FORMAT if layout["distributed_optimizer"] else "model_space",
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "extra_state": extra_state,
            "checksums": integrity.record(sums),
        }
        _write_json(os.path.join(tmp, META_FILE), meta)


def _os_error_in(error: BaseException) -> Optional[OSError]:
    """The OSError behind ``error``: its causes, and the per-rank failures torch's
    ``CheckpointException`` gathers."""
    stack, seen = [error], set()
    while stack:
        e = stack.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError):
            return e
        stack += [e.__cause__, e.__context__]
        for failure in getattr(e, "failures", {}).values():  # (exception, traceback) per rank
            stack += [x for x in (failure if isinstance(failure, tuple) else (failure,))
                      if isinstance(x, BaseException)]
    return None


def _disk_full(path: str) -> bool:
    """Less than 1 % or 64 MiB free: torch's writer reports a full disk as ``RuntimeError: Worker
    failure: [enforce fail at inline_container.cc] unexpected pos``, with no errno to look at."""
    usage = shutil.disk_usage(path)
    return usage.free < min(64 << 20, usage.total // 100) or usage.free < 1 << 20


def _save_failed(ckpt_root: str, step: int, error: BaseException) -> BaseException:
    """A failed save as one line when the file system refused it (full disk, quota, permissions);
    anything else is returned as it was."""
    os_error = _os_error_in(error)
    full = _disk_full(ckpt_root)
    if os_error is None and not full and dist.get_rank() == 0:
        return error
    previous = find_latest(ckpt_root)
    kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
    if full:
        reason = f"no space left on device ({shutil.disk_usage(ckpt_root).free / 2**20:.1f} MiB free)"
    elif os_error is not None:
        reason = os_error.strerror or str(os_error)
    else:  # another rank's file system failed; rank 0 says which
        reason = "the failure was on another rank"
    return CheckpointError(f"saving checkpoint {step} under {ckpt_root} failed: {reason}; its unfinished folder "
                           f"is removed and {kept}. Free space (fewer train.keep_last) or use another "
                           f"train.output_dir")


# --------------------------------------------------------------------------------------- save


def save_checkpoint(
    ckpt_root: str,
    step: int,
    model_chunks,
    optimizer=None,
    scheduler=None,
    extra_state: Optional[dict] = None,
    *,
    config=None,
    keep_last: Optional[int] = None,
) -> str:
    """Write checkpoint ``step`` under ``ckpt_root`` on all ranks (collective); return its folder.

    ``model_chunks``: this stage's model (``[model]`` or the model; DDP-wrapped or not).
    ``optimizer``: Megatron optimizer (plain, distributed or chained) or ``None``.
    ``scheduler``: Megatron ``OptimizerParamScheduler`` (or anything with a JSON-able
    ``state_dict()``) or ``None``. ``extra_state``: JSON-serialisable dict, identical on all ranks
    (rank 0 writes it), e.g. ``{"data": loader.state_dict(), "consumed_prompts": 1280}``.
    ``config``: the run's :class:`igrpo_megatron.config.Config`, stored as ``config.yaml``.
    ``keep_last``: after the new checkpoint is complete, delete all but the newest ``keep_last``.

    The folder is written as ``iter_XXXXXXX.tmp`` and renamed once every rank has finished, then
    ``latest`` is updated: a crash at any point leaves the previous checkpoint loadable.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    extra_state = dict(extra_state or {})
    try:  # fail before anything is written
        json.dumps(extra_state)
    except TypeError as e:
        raise TypeError(f"save_checkpoint: extra_state must be JSON-serialisable ({e})") from e
    model = _single_chunk(model_chunks)
    rank = dist.get_rank()
    tmp = os.path.join(ckpt_root, iter_dir_name(step) + TMP_SUFFIX)
    if rank == 0:
        os.makedirs(ckpt_root, exist_ok=True)
        prepare_tmp_dir(ckpt_root, step)
    dist.barrier()

    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

    try:
        _write(tmp, step, model, optimizer, scheduler, extra_state, config)
    except (Exception, CheckpointException) as e:
        failure = _save_failed(ckpt_root, step, e)  # before the clean-up frees space again
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # a full disk stays full otherwise
        if failure is e:
            raise
        raise failure from e
    dist.barrier()  # every rank's shards and RNG file are on disk

    final = tmp[: -len(TMP_SUFFIX)]
    if rank == 0:
        commit(tmp)
        if keep_last is not None:
            prune(ckpt_root, keep_last)
    dist.barrier()  # nobody races ahead (and maybe crashes) before the commit is visible
    return final


# --------------------------------------------------------------------------------------- load


def resolve_checkpoint(path: str) -> str:
    """A checkpoint folder from either a checkpoint root (its ``latest``) or a ``iter_*`` folder."""
    if step_of(path) is not None and os.path.isfile(os.path.join(path, META_FILE)):
        return path
    if path.rstrip("/").endswith(TMP_SUFFIX):
        raise CheckpointError(f"{path} is an incomplete checkpoint (a save that did not finish); "
                              f"load its checkpoint root or a complete iter_* folder instead")
    latest = find_latest(path)
    if latest is None:
        raise CheckpointError(f"no complete checkpoint under {path} (looked for {path}/latest and iter_* folders "
                              f"with {META_FILE})")
    return latest


def read_meta(ckpt_dir: str) -> dict:
    """``meta.json`` of a checkpoint folder, refused in one line when damaged or foreign."""
    path = os.path.join(ckpt_dir, META_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is damaged ({e}); restore it or load an earlier checkpoint") from e
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        found = meta.get("format_version") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path}: format_version {found} is not {FORMAT_VERSION}; it was written by another "
                              f"version of igrpo_megatron, or is not one of its checkpoints")
    missing = [k for k in ("step", "layout") if k not in meta]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; it is damaged: restore it or load an earlier "
                              f"checkpoint")
    return meta


def verify_checkpoint(path: str) -> tuple[str, int, int]:
    """Check a checkpoint without loading it (one process, no torch.distributed): every recorded
    checksum, and that its pickles would be admitted. Returns ``(folder, files, bytes)`` checked;
    raises :class:`CheckpointError` naming the first damaged file (and how many more)."""
    ckpt_dir = resolve_checkpoint(path)
    recorded = read_meta(ckpt_dir).get("checksums")
    if recorded is None:
        raise CheckpointError(f"{ckpt_dir} records no checksums (saved by an older igrpo_megatron); it cannot be "
                              f"verified, only loaded")
    integrity.raise_if_damaged(ckpt_dir, integrity.mismatches(ckpt_dir, recorded))
    read_dcp_metadata(ckpt_dir)
    check_common_file(ckpt_dir)
    files = recorded["files"]
    return ckpt_dir, len(files), sum(os.path.getsize(os.path.join(ckpt_dir, n)) for n in files)


def _check_optimizer_loadable(ckpt_dir: str, meta: dict, now: dict) -> None:
    """Refuse, with the way out, the optimizer loads megatron-core cannot do."""
    then = meta["layout"]
    if meta.get("optimizer_format") is None:
        raise CheckpointError(f"{ckpt_dir} has no optimizer state (it was saved without an optimizer); "
                              f"load it with load_optimizer=False (train.load_optimizer=false)")
    if then["distributed_optimizer"] != now["distributed_optimizer"]:
        raise CheckpointError(
            f"{ckpt_dir} holds {'distributed' if then['distributed_optimizer'] else 'plain'}-optimizer state, "
            f"but this run uses the {'distributed' if now['distributed_optimizer'] else 'plain'} optimizer; "
            f"megatron-core cannot convert optimizer state between the two. Set "
            f"parallel.use_distributed_optimizer={str(then['distributed_optimizer']).lower()}, or load with "
            f"load_optimizer=False (train.load_optimizer=false: fresh Adam moments)"
        )


def load_checkpoint(
    path: str,
    model_chunks,
    optimizer=None,
    scheduler=None,
    *,
    load_optimizer: bool = True,
    load_rng: bool = True,
    strict: bool = True,
) -> LoadedCheckpoint:
    """Load a checkpoint into ``model_chunks`` / ``optimizer`` / ``scheduler`` in place (collective).

    ``path``: a checkpoint root (resumes from its ``latest``) or one ``iter_*`` folder. The model
    may be laid out at any TP x PP (x DP); Megatron reshards the weights. ``optimizer`` is filled
    when given and ``load_optimizer`` is true; with ``load_optimizer=False`` it keeps fresh
    moments and its fp32 master copies are refreshed from the loaded weights. ``scheduler`` must
    be freshly built (Megatron's ``load_state_dict`` advances it by the saved step count). RNG
    states are restored only at the layout they were saved at. ``strict``: missing or
    unexpected model weights are an error.
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.validation import StrictHandling

    ckpt_dir = resolve_checkpoint(path)
    meta = read_meta(ckpt_dir)
    model = _single_chunk(model_chunks)
    now = _layout(optimizer)
    with_optimizer = optimizer is not None and load_optimizer
    if with_optimizer:
        _check_optimizer_loadable(ckpt_dir, meta, now)
    _verify_checksums(ckpt_dir, meta)

    state = _sharded_state_dict(model, optimizer if with_optimizer else None, is_loading=True)
    # Megatron's "unexpected" = asked for but absent from the checkpoint; keys the checkpoint has
    # but we do not ask for (optimizer state under load_optimizer=False) are always fine.
    with safe_unpickling(ckpt_dir):
        loaded = dist_checkpointing.load(
            state, ckpt_dir, strict=StrictHandling.RAISE_UNEXPECTED if strict else StrictHandling.LOG_UNEXPECTED
        )
    model.load_state_dict(loaded["model"], strict=strict)
    if with_optimizer:
        load_optimizer_state(optimizer, loaded["optimizer"])
    elif optimizer is not None:
        optimizer.reload_model_params()
    if scheduler is not None and meta.get("scheduler") is not None:
        scheduler.load_state_dict(meta["scheduler"])

    then = meta["layout"]
    same_layout = all(then[k] == now[k] for k in ("world_size", "tp", "pp"))
    rank = dist.get_rank()
    rng_restored = load_rng and same_layout and os.path.isfile(rng_file(ckpt_dir, rank))
    if rng_restored:
        load_rng_state(ckpt_dir, rank)
    elif load_rng and rank == 0:
        logger.warning("%s was saved at world_size=%d tp=%d pp=%d; RNG streams are per rank, so they are "
                       "not restored at this layout (the run continues, not bit-exactly)",
                       ckpt_dir, then["world_size"], then["tp"], then["pp"])

    config = None
    config_path = os.path.join(ckpt_dir, CONFIG_FILE)
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    return LoadedCheckpoint(
        path=ckpt_dir,
        step=int(meta["step"]),
        extra_state=meta.get("extra_state") or {},
        config=config,
        optimizer_loaded=with_optimizer,
        rng_restored=rng_restored,
    )
