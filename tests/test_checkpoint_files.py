"""Checkpoint folder bookkeeping, per-rank RNG files and the refusal to unpickle code (no torchrun)."""
from __future__ import annotations

import io
import os
import random
import types

import numpy as np
import pytest
import torch

from igrpo_megatron.checkpoint.directory import (
    LATEST_FILE,
    META_FILE,
    commit,
    complete_checkpoints,
    find_latest,
    prepare_tmp_dir,
    prune,
    step_of,
)
from igrpo_megatron.checkpoint.directory import CheckpointError
from igrpo_megatron.checkpoint.dist_checkpoint import resolve_checkpoint
from igrpo_megatron.checkpoint.safe_unpickle import check_common_file, sharded_objects_weights_only
from igrpo_megatron.checkpoint.rng import load_rng_state, save_rng_state


def _save(root, step) -> str:
    """What a save does on disk, minus the tensors: fill a .tmp folder, then commit it."""
    tmp = prepare_tmp_dir(str(root), step)
    with open(os.path.join(tmp, META_FILE), "w") as f:
        f.write("{}")
    return commit(tmp)


def _latest(root) -> str:
    with open(os.path.join(root, LATEST_FILE)) as f:
        return f.read().strip()


def test_commit_pointer_and_incomplete_folders(tmp_path):
    assert find_latest(str(tmp_path)) is None
    first = _save(tmp_path, 10)
    assert first == str(tmp_path / "iter_0000010") and _latest(tmp_path) == "iter_0000010"
    assert step_of(first) == 10 and step_of(first + ".tmp") is None

    prepare_tmp_dir(str(tmp_path), 20)  # a save that never finished, even with its meta file
    open(tmp_path / "iter_0000020.tmp" / META_FILE, "w").close()
    assert find_latest(str(tmp_path)) == first
    with pytest.raises(CheckpointError, match="incomplete"):
        resolve_checkpoint(str(tmp_path / "iter_0000020.tmp"))

    second = _save(tmp_path, 20)  # the retried save replaces the leftover .tmp
    assert find_latest(str(tmp_path)) == second == resolve_checkpoint(str(tmp_path))
    assert [s for s, _ in complete_checkpoints(str(tmp_path))] == [10, 20]


def test_pointer_rollback_and_dangling_pointer(tmp_path):
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    (tmp_path / LATEST_FILE).write_text("iter_0000001\n")  # a user rolls back on purpose
    assert find_latest(str(tmp_path)) == str(tmp_path / "iter_0000001")
    (tmp_path / LATEST_FILE).write_text("iter_0000099\n")  # points at nothing: newest complete wins
    assert find_latest(str(tmp_path)) == str(tmp_path / "iter_0000002")
    os.remove(tmp_path / LATEST_FILE)
    assert find_latest(str(tmp_path)) == str(tmp_path / "iter_0000002")


def test_resaving_a_step_replaces_it(tmp_path):
    path = _save(tmp_path, 5)
    (tmp_path / "iter_0000005" / "marker").write_text("old")
    assert _save(tmp_path, 5) == path
    assert not os.path.exists(os.path.join(path, "marker"))
    assert sorted(os.listdir(tmp_path)) == ["iter_0000005", LATEST_FILE]


def test_prune_keeps_last_k_and_the_pointed_one(tmp_path):
    for step in (2, 4, 6, 8):
        _save(tmp_path, step)
    prepare_tmp_dir(str(tmp_path), 9)  # a crashed save's leftover
    removed = prune(str(tmp_path), keep_last=2)
    assert sorted(os.listdir(tmp_path)) == ["iter_0000006", "iter_0000008", LATEST_FILE]
    assert len(removed) == 3
    (tmp_path / LATEST_FILE).write_text("iter_0000006\n")  # rolled back by hand: 6 survives
    prune(str(tmp_path), keep_last=1)
    assert sorted(os.listdir(tmp_path)) == ["iter_0000006", "iter_0000008", LATEST_FILE]
    _save(tmp_path, 10)  # the commit moves the pointer to 10
    prune(str(tmp_path), keep_last=1)
    assert sorted(os.listdir(tmp_path)) == ["iter_0000010", LATEST_FILE]
    with pytest.raises(ValueError):
        prune(str(tmp_path), keep_last=0)


def test_rng_state_round_trip(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    save_rng_state(str(tmp_path), rank=3)
    first = (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    load_rng_state(str(tmp_path), rank=3)
    assert (random.random(), np.random.randn(3).tolist(), torch.rand(3).tolist()) == first
    assert os.listdir(tmp_path / "rng") == ["rank_00003.safetensors"]


class _RunsCode:
    def __reduce__(self):
        return (os.makedirs, (os.environ["IGRPO_TEST_PWNED"],))


def test_common_file_that_needs_unpickling_code_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("IGRPO_TEST_PWNED", str(marker))
    torch.save({"optimizer": _RunsCode()}, tmp_path / "common.pt")
    with pytest.raises(CheckpointError, match="weights_only"):
        check_common_file(str(tmp_path))
    assert not marker.exists()
    torch.save({"optimizer": {"param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999)}]}}, tmp_path / "common.pt")
    check_common_file(str(tmp_path))  # plain containers and numbers load


def test_pickled_sharded_object_that_runs_code_is_refused(tmp_path, monkeypatch):
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    original = DefaultLoadPlanner.load_bytes
    marker = tmp_path / "pwned"
    monkeypatch.setenv("IGRPO_TEST_PWNED", str(marker))
    blob = io.BytesIO()
    torch.save(_RunsCode(), blob)
    blob.seek(0)
    entry = types.SimpleNamespace(dest_index=types.SimpleNamespace(fqn="decoder.layers.mlp._extra_state"))
    with sharded_objects_weights_only(), pytest.raises(CheckpointError, match="_extra_state"):
        DefaultLoadPlanner.load_bytes(DefaultLoadPlanner(), entry, blob)
    assert not marker.exists()
    assert DefaultLoadPlanner.load_bytes is original  # only patched during a load
