"""torchrun x4 worker: a checkpoint written at TP=2 x PP=2 reloads at TP=1 x PP=1 (DP=4).

Checks, one ``CHECK name value`` line each (rank 0):
- ``logits_diff``: max |logits| difference of the reloaded model vs the saving one (same input);
- ``step_diff_optim``: after one more identical training step in both layouts, max |logits|
  difference when the distributed optimizer's Adam state was resharded too;
- ``plain_optim_error``: 1 if loading distributed-optimizer state into the plain optimizer raised
  a CheckpointError naming the setting to change (megatron-core cannot convert between the two);
- ``step_diff_fresh_optim``: the same with ``load_optimizer=False`` (fresh Adam moments): the
  negative control, which must differ by far more;
- ``loss3_diff``: |loss of that step at TP1 - at TP2xPP2|;
- ``rng_restored_other_layout``: 1 if RNG states were (wrongly) restored at another layout;
- ``no_optim_error``: 1 if loading optimizer state from a model-only checkpoint raised a
  CheckpointError naming load_optimizer=False.
"""
import os
import sys

import torch
import torch.distributed as dist

from igrpo_megatron.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from igrpo_megatron.models.parallel import destroy_parallel
from igrpo_megatron.models.provider import load_hf_config
from tests.dist.ckpt_harness import ExampleStream, setup, train_step
from tests.dist.common import check, logits_everywhere


def main():
    hf, root = sys.argv[1], sys.argv[2]
    vocab = load_hf_config(hf).vocab_size
    probe = torch.randint(3, vocab, (2, 16), generator=torch.Generator().manual_seed(7))

    # TP=2 x PP=2: train, save (with and without optimizer), then one more step.
    policy = setup(hf, tp=2, pp=2, dropout=0.0)
    model = policy.model_chunks[0]
    rows = model.padded_vocab_size
    stream = ExampleStream(24, vocab)
    for _ in range(2):
        train_step(policy, stream, vocab, noise=False)
    saved_logits = logits_everywhere(model, probe, rows)
    full = save_checkpoint(os.path.join(root, "full"), 2, policy.model_chunks, policy.optimizer, policy.scheduler,
                           {"data": stream.state_dict()})
    weights_only = save_checkpoint(os.path.join(root, "weights"), 2, policy.model_chunks)
    loss3_ref = train_step(policy, stream, vocab, noise=False)
    stepped_ref = logits_everywhere(model, probe, rows)
    destroy_parallel()

    def at_tp1(distributed_optimizer, load_optimizer, path=full):
        policy = setup(hf, tp=1, pp=1, dropout=0.0, distributed_optimizer=distributed_optimizer)
        loaded = load_checkpoint(path, policy.model_chunks, policy.optimizer, policy.scheduler,
                                 load_optimizer=load_optimizer)
        stream = ExampleStream(24, vocab)
        stream.load_state_dict(loaded.extra_state["data"])
        return policy, stream, loaded

    policy, stream, loaded = at_tp1(True, True)
    check("logits_diff", (logits_everywhere(policy.model_chunks[0], probe, rows) - saved_logits).abs().max())
    check("rng_restored_other_layout", loaded.rng_restored)
    loss3 = train_step(policy, stream, vocab, noise=False)
    check("loss3_diff", abs(loss3 - loss3_ref))
    check("step_diff_optim", (logits_everywhere(policy.model_chunks[0], probe, rows) - stepped_ref).abs().max())

    try:  # distributed-optimizer state into the plain optimizer: megatron cannot; we say so
        at_tp1(False, True)
        check("plain_optim_error", 0)
    except CheckpointError as e:
        check("plain_optim_error", "use_distributed_optimizer=true" in str(e))

    policy, stream, _ = at_tp1(True, False)
    train_step(policy, stream, vocab, noise=False)
    check("step_diff_fresh_optim", (logits_everywhere(policy.model_chunks[0], probe, rows) - stepped_ref).abs().max())

    try:
        at_tp1(True, True, path=weights_only)
        check("no_optim_error", 0)
    except CheckpointError as e:
        check("no_optim_error", "load_optimizer=False" in str(e))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
