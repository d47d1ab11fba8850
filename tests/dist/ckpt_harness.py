"""A small, fully seeded training setup for the checkpoint tests (run under torchrun).

It trains the project's own :class:`~igrpo_megatron.models.policy.Policy` (tiny HF Qwen2 ->
Megatron GPTModel, DDP, Megatron optimizer and LR schedule, ``Policy.train_step``) with a
likelihood loss, so the checkpoint round-trip is tested on exactly the objects the trainer holds.
Every random source a resume must restore is used on purpose: dropout under the TP RNG tracker,
torch's CPU generator (token corruption), NumPy (loss-mask dropping), Python's ``random`` (row
order) and a data position (an epoch-shuffled sequence of examples).
"""
from __future__ import annotations

import random

import numpy as np
import torch

from igrpo_megatron.batch import TrainBatch
from igrpo_megatron.models.parallel import initialize_parallel
from igrpo_megatron.models.policy import Policy
from igrpo_megatron.models.provider import load_hf_config
from tests.dist.common import tiny_config

SEQ, MBS, GLOBAL_BATCH = 16, 2, 8  # the global batch is the same at every DP size
TOTAL_STEPS = 50


def setup(hf_dir: str, tp: int, pp: int, distributed_optimizer: bool = True, dropout: float = 0.1,
          seed: int = 1234) -> Policy:
    """Initialise the layout and build the policy (tiny HF weights, fp32, Adam, cosine schedule)."""
    cfg = tiny_config(hf_dir, tp, pp, model={"transformer_impl": "local"},
                      parallel={"use_distributed_optimizer": distributed_optimizer},
                      optim={"lr": 1e-3, "weight_decay": 0.01, "warmup_ratio": 0.04, "clip_grad": 1.0},
                      train={"micro_batch_size": MBS})
    initialize_parallel(cfg.parallel, seed=seed)
    random.seed(seed)
    np.random.seed(seed)
    policy = Policy(cfg, load_hf_config(hf_dir), total_steps=TOTAL_STEPS)
    for m in policy.model_chunks[0].modules():  # the provider builds without dropout; resumes must survive it
        if isinstance(m, torch.nn.Dropout):
            m.p = dropout
        if hasattr(m, "hidden_dropout"):
            m.hidden_dropout = dropout
    return policy


class ExampleStream:
    """An epoch-shuffled stream of fixed examples with a resumable position (like a data loader)."""

    def __init__(self, num_examples: int, vocab: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.examples = torch.randint(3, vocab, (num_examples, SEQ), generator=g)
        self.seed, self.epoch, self.pos = seed, 0, 0
        self._order = self._shuffle()

    def _shuffle(self):
        return torch.randperm(len(self.examples), generator=torch.Generator().manual_seed(self.seed + self.epoch))

    def take(self, n: int) -> torch.Tensor:
        rows = []
        for _ in range(n):
            if self.pos == len(self.examples):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffle()
            rows.append(self.examples[self._order[self.pos]])
            self.pos += 1
        return torch.stack(rows)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._shuffle()


def _batch(stream: ExampleStream, vocab: int, noise: bool) -> TrainBatch:
    """This DP rank's share of the next global batch; ``noise`` adds the RNG-dependent token
    corruption, loss-mask dropping and row order."""
    from megatron.core import parallel_state as ps

    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    per_dp = GLOBAL_BATCH // dp
    tokens = stream.take(GLOBAL_BATCH)[dp_rank * per_dp:(dp_rank + 1) * per_dp].clone()
    mask = torch.ones(tokens.shape)
    if noise:
        corrupt = torch.rand(tokens.shape) < 0.1  # torch CPU generator
        tokens[corrupt] = torch.randint(3, vocab, (int(corrupt.sum()),))
        mask = torch.from_numpy(np.random.rand(*tokens.shape) > 0.2).float()  # NumPy generator
        order = list(range(per_dp))
        random.shuffle(order)  # Python generator
        tokens, mask = tokens[order], mask[order]
    mask[:, 0] = 0  # the first token has no prediction
    return TrainBatch(tokens=tokens, response_mask=mask, advantages=torch.ones(per_dp))


def _nll(logprobs, entropy, mb, denominators):
    """Mean negative log-likelihood of the masked tokens over the whole step."""
    return -(logprobs * mb.response_mask).sum() / denominators["num_tokens"], {}


def train_step(policy: Policy, stream: ExampleStream, vocab: int, noise: bool = True) -> float:
    """One optimizer step on one global batch; returns the step's loss (same on all ranks)."""
    metrics = policy.train_step(_batch(stream, vocab, noise), _nll)
    assert metrics["update_ok"] == 1.0, metrics
    return metrics["loss"]
