"""torchrun x1 worker: the trainer's components on a real Megatron policy (tiny Qwen2, TP=1).

Prints one ``CHECK name value`` line per figure:
- the Checkpointer's schedule: which steps of a 5-step run it saves for ``save_every`` 2, 10 and
  0 (``saved_every2`` = "2,4,5": a number per step, 0 for none), what keep_last=2 leaves on disk,
  and what resume returns (step, weight version, data position) and loads (the weights);
- ``Trainer.update`` with two mini-batches: the KL of each optimizer step and the one it logs.
"""
import os
import sys
from types import SimpleNamespace

import torch

from igrpo_megatron.batch import TrainBatch
from igrpo_megatron.checkpoint import Checkpointer
from igrpo_megatron.checkpoint.directory import complete_checkpoints
from igrpo_megatron.config import Config
from igrpo_megatron.data import PromptIterator, synthetic_examples
from igrpo_megatron.metrics import Stopwatch
from igrpo_megatron.models import Policy, initialize_parallel, load_hf_config
from igrpo_megatron.trainer import PHASES, Trainer

TOTAL = 5


def check(name, value):
    print(f"CHECK {name} {value}", flush=True)


def config(hf: str, out: str, save_every: int) -> Config:
    cfg = Config()
    cfg.model.hf_path, cfg.model.dtype = hf, "fp32"
    cfg.train.output_dir, cfg.train.save_every, cfg.train.keep_last = out, save_every, 2
    cfg.train.micro_batch_size, cfg.train.mini_batches = 2, 2
    cfg.optim.lr, cfg.optim.warmup_ratio, cfg.optim.min_lr_ratio = 2e-2, 0.0, 1.0
    cfg.rollout.temperature = 1.0
    return cfg


def first_weight(policy) -> torch.Tensor:
    return next(policy.model_chunks[0].parameters()).detach().clone()


def schedule(hf: str, root: str, policy) -> None:
    for every in (2, 10, 0):
        cfg = config(hf, os.path.join(root, f"every{every}"), every)
        data = PromptIterator(synthetic_examples(20, seed=1), seed=3)
        version = {"v": 0}
        ckpt = Checkpointer(cfg, policy, data, lambda: version["v"])
        saved = []
        for step in range(1, TOTAL + 1):
            data.next_batch(3)
            version["v"] = 10 + step
            if ckpt.maybe_save(step, last=step == TOTAL) is not None:
                saved.append(step)
        check(f"saved_every{every}", ",".join(map(str, saved)) or "none")
        check(f"kept_every{every}", ",".join(str(s) for s, _ in complete_checkpoints(ckpt.root)) or "none")
        if every == 2:
            expected = first_weight(policy)
            with torch.no_grad():
                next(policy.model_chunks[0].parameters()).add_(1.0)
            fresh = PromptIterator(synthetic_examples(20, seed=1), seed=3)
            resumed = Checkpointer(cfg, policy, fresh, lambda: 0).resume()
            check("resumed_step", resumed.step)
            check("resumed_weight_version", resumed.weight_version)
            check("resumed_consumed", fresh.consumed)
            check("resumed_data_state_matches", int(resumed.data_state == data.state_dict()))
            check("resumed_weights_diff", float((first_weight(policy) - expected).abs().max()))
            cfg.train.resume = False
            check("resume_off_is_none", int(Checkpointer(cfg, policy, fresh, lambda: 0).resume() is None))


def update_mean(hf: str, root: str, policy) -> None:
    """``Trainer.update`` on a real policy, recording what each of its optimizer steps returned."""
    cfg = config(hf, os.path.join(root, "update"), 0)
    per_step = []

    class Recording:  # the real policy; its train_step's figures are kept as well as returned
        compute_logprobs = staticmethod(policy.compute_logprobs)

        def train_step(self, batch, loss_fn):
            per_step.append(policy.train_step(batch, loss_fn))
            return per_step[-1]

    trainer = SimpleNamespace(cfg=cfg, par=SimpleNamespace(dp_rank=0, dp_size=1), pad_id=0, policy=Recording(),
                              reference=None)
    trainer.loss_fn = lambda *args: Trainer.loss_fn(trainer, *args)
    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(3, 200, (8, 24), generator=g)
    mask = torch.zeros(8, 24)
    mask[:, 12:] = 1.0
    batch = TrainBatch(tokens, mask, torch.tensor([1.0, -1.0] * 4))
    logged = Trainer.update(trainer, batch, Stopwatch(PHASES))
    check("update_steps", len(per_step))
    for i, m in enumerate(per_step):
        check(f"update_kl_{i}", m["approx_kl"])
    check("update_kl_logged", logged["approx_kl"])


def main():
    hf, root = sys.argv[1], sys.argv[2]
    cfg = config(hf, root, 0)
    initialize_parallel(cfg.parallel, seed=1)
    policy = Policy(cfg, load_hf_config(hf), total_steps=TOTAL)
    schedule(hf, root, policy)
    update_mean(hf, root, policy)


if __name__ == "__main__":
    main()
