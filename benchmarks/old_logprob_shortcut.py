"""Step time of the training side with and without the separate old-logprob forward (issue 17
item 1), on the tiny Qwen2 (python -m igrpo_megatron.demo.tiny's model) at TP=1, one process.

With one optimizer step per rollout batch the trainer now skips that forward; this times the two
ways (median of REPEATS steps each, 32 rows of 256 tokens) and prints the ratio last.
Run: torchrun --standalone --nproc_per_node=1 benchmarks/old_logprob_shortcut.py
"""
import statistics
import tempfile
import time

import torch

from igrpo_megatron.algorithms.losses import policy_loss
from igrpo_megatron.batch import TrainBatch
from igrpo_megatron.config import Config
from igrpo_megatron.demo.tiny import make_model
from igrpo_megatron.models import Policy, initialize_parallel, load_hf_config

ROWS, WIDTH, REPEATS = 32, 256, 5


def main() -> None:
    hf = make_model(tempfile.mkdtemp(), arch="qwen2")
    cfg = Config()
    cfg.model.hf_path, cfg.model.dtype = hf, "fp32"
    cfg.train.micro_batch_size, cfg.train.max_steps, cfg.rollout.temperature = 4, 100, 1.0
    initialize_parallel(cfg.parallel, seed=1)
    policy = Policy(cfg, load_hf_config(hf))
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(ROWS, WIDTH)
    mask[:, 64:] = 1
    batch = TrainBatch(torch.randint(3, 300, (ROWS, WIDTH), generator=g), mask, torch.randn(ROWS, generator=g))

    def loss(lp, ent, mb, d):
        return policy_loss(lp, mb.old_logprobs, mb.advantages, mb.response_mask, cfg.loss, **d)

    def timed(separate: bool) -> float:
        start = time.perf_counter()
        batch.old_logprobs = policy.compute_logprobs(batch) if separate else None
        policy.train_step(batch, loss)
        return time.perf_counter() - start

    times = {s: [] for s in (True, False)}
    for _ in range(REPEATS):  # interleaved, so drift on the shared cores hits both alike
        for separate in (True, False):
            times[separate].append(timed(separate))
    before, after = statistics.median(times[True]), statistics.median(times[False])
    print(f"{ROWS} rows x {WIDTH} tokens, median of {REPEATS}: separate pass {before:.3f} s, shortcut {after:.3f} s")
    print(f"step_time_shortcut_vs_separate: {after / before:.3f}")


if __name__ == "__main__":
    main()
