"""Train N steps with a checkpoint every k, resuming from the newest checkpoint if there is one.

Prints ``PID <pid>`` (every rank, so a test can SIGKILL the workers: torchrun starts each in its
own session), ``LOSS <step> <float.hex>`` per step, ``SAVED <step>`` after each checkpoint and
``RESUMED <step>`` after a load (rank 0). ``--no-load-rng`` resumes without the saved RNG states
(the negative control). ``--pause-after-save S`` sleeps after the checkpoint of
step S so that the test's SIGKILL lands at a known point.
"""
import argparse
import os
import time

import torch.distributed as dist

from igrpo_megatron.checkpoint import find_latest, load_checkpoint, save_checkpoint
from igrpo_megatron.models.provider import load_hf_config
from tests.dist.ckpt_harness import ExampleStream, setup, train_step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf", required=True)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--save-every", type=int, required=True)
    ap.add_argument("--keep-last", type=int, default=2)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--pause-after-save", type=int, default=-1)
    ap.add_argument("--no-load-rng", action="store_true", help="resume without the saved RNG states")
    args = ap.parse_args()

    vocab = load_hf_config(args.hf).vocab_size
    policy = setup(args.hf, args.tp, args.pp)
    parts = (policy.model_chunks, policy.optimizer, policy.scheduler)
    stream = ExampleStream(num_examples=24, vocab=vocab)  # 24 examples, 8 per step: epochs roll over
    os.write(1, f"PID {os.getpid()}\n".encode())  # one write(2): ranks share the pipe, lines must not interleave
    rank0 = dist.get_rank() == 0
    start = 0
    if find_latest(args.ckpt) is not None:
        loaded = load_checkpoint(args.ckpt, *parts, load_rng=not args.no_load_rng)
        stream.load_state_dict(loaded.extra_state["data"])
        start = loaded.step
        if rank0:
            print(f"RESUMED {start} rng={loaded.rng_restored} optim={loaded.optimizer_loaded}", flush=True)
    for step in range(start + 1, args.steps + 1):
        loss = train_step(policy, stream, vocab)
        if rank0:
            print(f"LOSS {step} {loss.hex()} {loss:.6f} lr={policy.optimizer.param_groups[0]['lr']:.3e}", flush=True)
        if step % args.save_every == 0:
            save_checkpoint(args.ckpt, step, *parts, {"data": stream.state_dict()}, config=policy.cfg,
                            keep_last=args.keep_last)
            if rank0:
                print(f"SAVED {step}", flush=True)
            if step == args.pause_after_save:
                time.sleep(600)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
