"""Loading a checkpoint executes no code from it: the guards around every pickle it contains.

Everything igrpo_megatron writes itself is JSON or safetensors. Megatron's ``torch_dist`` format
adds three kinds of pickle, each opened here before torch or Megatron unpickles it:

- ``.metadata``, the index of torch's distributed-checkpoint format, which torch reads with a
  bare ``pickle.load``. :func:`read_dcp_metadata` reads it with an unpickler that admits only the
  classes that metadata is made of (:data:`_DCP_METADATA_CLASSES`, torch dtypes, ``torch.Size``);
  anything else is refused with the file and the class named, before any of it is built. A file
  that passes builds only those classes, so torch's own read of the same bytes runs nothing else.
- ``common.pt`` (non-tensor optimizer state such as param groups), which Megatron reads with a
  bare ``torch.load`` (``weights_only=True`` by default since torch 2.6, unless the environment
  sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``): opened with ``weights_only=True`` first.
- Megatron's ``ShardedObject`` entries (the layers' ``_extra_state``: ``None`` with the local
  spec, FP8 scaling state with Transformer Engine), pickled bytes inside the shards that torch's
  load planner opens with ``weights_only=False``: each is opened with ``weights_only=True``
  first, during the load (:func:`sharded_objects_weights_only`).
"""
from __future__ import annotations

import contextlib
import os
import pickle

import torch

from igrpo_megatron.checkpoint.directory import CheckpointError

DCP_METADATA_FILE = ".metadata"
COMMON_FILE = "common.pt"

# What torch 2.4-2.13's distributed-checkpoint writers pickle into .metadata (found by recording
# find_class on checkpoints Megatron wrote; the planner classes travel in Metadata.planner_data).
_DCP_METADATA_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "MetadataIndex", "StorageMeta", "ChunkStorageMetadata", "TensorProperties",
        "TensorStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.planner": {
        "SavePlan", "WriteItem", "WriteItemType", "TensorWriteData", "BytesIOWriteData", "LoadItemType",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},  # torch.strided & co. by name; looks a layout up, nothing more
    "torch": {"Size"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        if name in _DCP_METADATA_CLASSES.get(module, ()) or (
                module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise CheckpointError(f"{self.path}: refusing to unpickle {module}.{name}, which is not part of torch's "
                              f"distributed-checkpoint metadata (the file was not written by torch or has been "
                              f"altered); nothing was executed. Use a checkpoint from a trusted source")


def read_dcp_metadata(ckpt_dir: str):
    """The ``torch.distributed.checkpoint`` ``Metadata`` of ``ckpt_dir``, unpickled safely."""
    path = os.path.join(ckpt_dir, DCP_METADATA_FILE)
    try:
        with open(path, "rb") as f:
            return _MetadataUnpickler(f, path).load()
    except FileNotFoundError as e:
        raise CheckpointError(f"{ckpt_dir} has no {DCP_METADATA_FILE}; it is not a complete Megatron dist "
                              f"checkpoint") from e
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path} is damaged ({type(e).__name__}: {e}); restore it or use an earlier "
                              f"checkpoint") from e


def check_common_file(ckpt_dir: str) -> None:
    """Refuse a ``common.pt`` that needs arbitrary unpickling before Megatron's bare torch.load sees it."""
    path = os.path.join(ckpt_dir, COMMON_FILE)
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"{ckpt_dir} has no {COMMON_FILE}; it is not a complete Megatron dist checkpoint") from e
    except Exception as e:  # noqa: BLE001 - any unpickling refusal becomes one clear message
        raise CheckpointError(f"{path} cannot be loaded with torch.load(weights_only=True) ({e}); "
                              f"refusing to unpickle it") from e


@contextlib.contextmanager
def sharded_objects_weights_only():
    """Open every pickled ``ShardedObject`` with ``weights_only=True`` before torch's planner
    unpickles it without that restriction."""
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    original = DefaultLoadPlanner.load_bytes

    def load_bytes(self, read_item, value):
        try:
            torch.load(value, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling refusal becomes one clear message
            raise CheckpointError(f"checkpoint entry {read_item.dest_index.fqn} cannot be loaded with "
                                  f"torch.load(weights_only=True) ({e}); refusing to unpickle it") from e
        value.seek(0)
        original(self, read_item, value)

    DefaultLoadPlanner.load_bytes = load_bytes
    try:
        yield
    finally:
        DefaultLoadPlanner.load_bytes = original


@contextlib.contextmanager
def safe_unpickling(ckpt_dir: str):
    """Check ``.metadata`` and ``common.pt`` of ``ckpt_dir`` now and guard the pickled entries
    while the body loads it."""
    read_dcp_metadata(ckpt_dir)
    check_common_file(ckpt_dir)
    with sharded_objects_weights_only():
        yield
