"""torchrun x2 worker (PP=2) for tests/test_train_batching.py: one train step of the tiny Qwen2 on
rows of different lengths, three ways, from the same HF weights:

- ``separate``: old logprobs from their own forward pass, micro-batches of 2 rows grouped by length;
- ``shortcut``: ``old_logprobs=None`` (the training forward's logprobs, detached);
- ``budget``: the shortcut with ``train.max_tokens_per_micro_batch=40`` (micro-batches of varying
  row counts and widths through the pipeline).
Prints the loss of each and the max gradient difference of each against ``separate``.
"""
import sys

import torch
import torch.distributed as dist

from igrpo_megatron.algorithms.losses import policy_loss
from igrpo_megatron.batch import TrainBatch
from igrpo_megatron.models import Policy, destroy_parallel, initialize_parallel, load_hf_config
from tests.dist.common import check, tiny_config

B, T = 8, 24


def make_batch(vocab):
    g = torch.Generator().manual_seed(11)
    tokens = torch.randint(3, vocab, (B, T), generator=g)
    mask = torch.zeros(B, T)
    for i, end in enumerate([24, 9, 17, 6, 21, 12, 8, 15]):
        mask[i, 4:end] = 1
        tokens[i, end:] = 0
    return TrainBatch(tokens=tokens, response_mask=mask, advantages=torch.randn(B, generator=g))


def step(hf_dir, separate, max_tokens=None):
    cfg = tiny_config(hf_dir, pp=2, train={"max_steps": 2, "max_tokens_per_micro_batch": max_tokens},
                      optim={"lr": 1e-3, "warmup_ratio": 0.0}, loss={"clip_high": 0.28})
    policy = Policy(cfg, load_hf_config(hf_dir))
    batch = make_batch(policy.hf_cfg.vocab_size)
    if separate:
        batch.old_logprobs = policy.compute_logprobs(batch)

    def loss(lp, ent, mb, d):
        return policy_loss(lp, mb.old_logprobs, mb.advantages, mb.response_mask, cfg.loss, entropy=ent, **d)

    metrics = policy.train_step(batch, loss)
    grads = torch.cat([p.main_grad.flatten().clone() for p in policy.model_chunks[0].parameters()])
    return metrics, grads


def max_over_ranks(x):
    t = torch.tensor(float(x))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


if __name__ == "__main__":
    hf_dir = sys.argv[1]
    initialize_parallel(tiny_config(hf_dir, pp=2).parallel, seed=1)
    ref_m, ref_g = step(hf_dir, separate=True)
    check("grad_abs_max", max_over_ranks(ref_g.abs().max()))
    check("separate_loss", ref_m["loss"])
    check("separate_approx_kl", ref_m["approx_kl"])
    for tag, kwargs in (("shortcut", {}), ("budget", {"max_tokens": 40})):
        m, g = step(hf_dir, separate=False, **kwargs)
        check(f"{tag}_loss", m["loss"])
        check(f"{tag}_approx_kl", m["approx_kl"])
        check(f"{tag}_grad_diff", max_over_ranks((g - ref_g).abs().max()))
    destroy_parallel(destroy_process_group=True)
