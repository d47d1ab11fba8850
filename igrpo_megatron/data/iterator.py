"""Endless, epoch-shuffled, resumable walk over the prompts.

Each epoch's order is a pure function of (seed, epoch), so the position is just (epoch, index):
``state_dict()`` saved with a checkpoint makes a resumed run draw exactly the prompts the
uninterrupted run would have drawn next.
"""
from __future__ import annotations

import hashlib
from typing import Iterator, Sequence

import numpy as np

from igrpo_megatron.data.examples import DataError, Example


class PromptIterator:
    def __init__(self, examples: Sequence[Example], seed: int, shuffle: bool = True):
        if not examples:
            raise DataError("no prompts to iterate over; check data.source / data.preset")
        self.examples = list(examples)
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.index = 0  # next position inside this epoch's order
        self._order = self._permutation(0)
        # Detects resuming against different data (a changed file would silently shift prompts).
        self.fingerprint = hashlib.sha256("\n".join(e.id for e in self.examples).encode()).hexdigest()[:16]

    def _permutation(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.examples)))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.examples)).tolist()

    def next_batch(self, n: int) -> list[Example]:
        """The next ``n`` prompts; a batch may span an epoch boundary."""
        return [next(self) for _ in range(n)]

    def __iter__(self) -> Iterator[Example]:
        return self

    def __next__(self) -> Example:
        if self.index == len(self.examples):
            self.epoch += 1
            self.index = 0
            self._order = self._permutation(self.epoch)
        example = self.examples[self._order[self.index]]
        self.index += 1
        return example

    @property
    def consumed(self) -> int:
        """Prompts drawn so far over all epochs."""
        return self.epoch * len(self.examples) + self.index

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "shuffle": self.shuffle,
                "num_examples": len(self.examples), "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("seed", "shuffle", "num_examples", "fingerprint"):
            if state[key] != mine[key]:
                raise DataError(
                    f"cannot resume the prompt iterator: the checkpoint's {key} is {state[key]!r} but this "
                    f"run's is {mine[key]!r}; resume with the same data.source/preset, data.seed and "
                    f"data.shuffle, or start a new train.output_dir")
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = self._permutation(self.epoch)
