"""When a run saves, what it resumes from, and how many checkpoints it keeps.

The trainer calls two things: :meth:`Checkpointer.resume` once at start-up and
:meth:`Checkpointer.maybe_save` after every step; the schedule (``train.save_every``, the last
step always), the folder (``<train.output_dir>/checkpoints``) and pruning (``train.keep_last``)
live here. The saving and loading themselves are :mod:`~igrpo_megatron.checkpoint.dist_checkpoint`'s.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional

from igrpo_megatron.checkpoint.directory import find_latest
from igrpo_megatron.checkpoint.dist_checkpoint import load_checkpoint, save_checkpoint
from igrpo_megatron.config import Config


@dataclass(frozen=True)
class Resumed:
    """Where a resumed run stands: the step it continues after, the weight version the rollout
    servers will be told, and the data position it was saved at."""

    path: str
    step: int
    weight_version: int
    data_state: dict
    method_state: dict  # the sampling method's training state (rollout/methods.py; {} for most)


class Checkpointer:
    """Saves ``policy`` (model, optimizer, LR schedule, RNG) with the run's position; all calls are collective.

    ``data`` is the prompt iterator (``state_dict`` / ``load_state_dict``); ``weight_version``
    reads the version the policy's weights carry now; ``method_state`` the sampling method's state
    (JSON, the same on every rank: Self-Verification's buffer). With ``train.save_every = 0`` nothing is
    ever saved.
    """

    def __init__(self, cfg: Config, policy, data, weight_version: Callable[[], int],
                 method_state: Callable[[], dict] = dict):
        self.cfg, self.policy, self.data, self.weight_version = cfg, policy, data, weight_version
        self.method_state = method_state
        self.root = os.path.join(cfg.train.output_dir, "checkpoints")
        self.last_saved: Optional[int] = None  # the step whose state is on disk (saved or resumed from)

    def resume(self) -> Optional[Resumed]:
        """Load the latest complete checkpoint in place (policy and data position) when
        ``train.resume`` is set and one exists; ``None`` for a fresh start."""
        latest = find_latest(self.root) if self.cfg.train.resume else None
        if latest is None:
            return None
        loaded = load_checkpoint(latest, self.policy.model_chunks, self.policy.optimizer, self.policy.scheduler,
                                 load_optimizer=self.cfg.train.load_optimizer)
        self.data.load_state_dict(loaded.extra_state["data"])
        self.last_saved = loaded.step
        return Resumed(loaded.path, loaded.step, int(loaded.extra_state["weight_version"]),
                       loaded.extra_state["data"], loaded.extra_state.get("method", {}))

    def should_save(self, step: int, last: bool) -> bool:
        every = self.cfg.train.save_every
        return bool(every) and (step % every == 0 or last)

    def maybe_save(self, step: int, *, last: bool = False) -> Optional[str]:
        """Save after ``step`` if the schedule says so (every ``save_every`` steps, and the
        ``last`` step of the run); returns the checkpoint folder, or ``None``."""
        return self.save(step) if self.should_save(step, last) else None

    def save(self, step: int) -> str:
        """Save after ``step`` now, whatever the schedule; keeps the newest ``train.keep_last``."""
        extra = {"weight_version": self.weight_version(), "data": self.data.state_dict(),
                 "method": self.method_state()}
        self.last_saved = step
        return save_checkpoint(self.root, step, self.policy.model_chunks, self.policy.optimizer,
                               self.policy.scheduler, extra, config=self.cfg, keep_last=self.cfg.train.keep_last)
