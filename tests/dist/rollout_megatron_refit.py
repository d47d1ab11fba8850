"""torchrun worker (2 ranks, TP=2) for tests/test_rollout_server.py: the production refit path.

A Megatron policy loaded from HF_DIR takes one optimizer step, its weights are streamed out by
``export_hf_weights`` (a collective) into ``Refitter.update`` (disk transport, rank 0 sends), and
rank 0 then generates greedily on the server. Both ranks score the server's completions with the
Megatron model itself.

argv: HF_DIR SERVER_URL API_KEY REFIT_DIR VERSION OUT_JSON
Prints ``CHECK megatron_vs_server_logprob_max_diff <v>``; rank 0 writes OUT_JSON (prompts and samples).
"""
import json
import sys

import torch
import torch.distributed as dist

from igrpo_megatron.algorithms.losses import sft_loss
from igrpo_megatron.batch import TrainBatch
from igrpo_megatron.config import RolloutConfig
from igrpo_megatron.models import Policy, destroy_parallel, initialize_parallel, load_hf_config
from igrpo_megatron.rollout import Refitter, RolloutClient, SamplingParams
from igrpo_megatron.weights import export_hf_weights
from tests.dist.common import tiny_config


def one_training_step(policy):
    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(5, 300, (4, 24), generator=g)
    mask = torch.zeros(4, 24)
    mask[:, 12:] = 1
    batch = TrainBatch(tokens=tokens, response_mask=mask, advantages=torch.zeros(4))
    policy.train_step(batch, lambda lp, ent, mb, d: sft_loss(lp, mb.response_mask, d["num_tokens"]))


def main():
    hf_dir, url, api_key, refit_dir, version, out_json = sys.argv[1:7]
    version = int(version)
    cfg = tiny_config(hf_dir, tp=2, train={"max_steps": 1},
                      optim={"lr": 5e-3, "warmup_ratio": 0.0, "min_lr_ratio": 1.0})  # one Adam step: ~lr per weight
    initialize_parallel(cfg.parallel, seed=1)
    policy = Policy(cfg, load_hf_config(hf_dir))
    one_training_step(policy)

    sender = dist.get_rank() == 0
    refitter = Refitter(RolloutConfig(refit_transport="disk", refit_dir=refit_dir), [url], api_key,
                        is_sender=sender)
    refitter.update(export_hf_weights(policy.model_chunks, policy.hf_cfg, bucket_bytes=256 << 10), version)

    g = torch.Generator().manual_seed(9)
    prompts = [torch.randint(5, 300, (n,), generator=g).tolist() for n in (10, 140)]
    result = [None]
    if sender:
        client = RolloutClient([url], api_key, expected_version=version)
        samples = client.generate_batch(prompts, 1, SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True))
        result = [[{"token_ids": s.token_ids, "logprobs": s.logprobs, "weight_version": s.weight_version}
                   for [s] in samples]]
    dist.broadcast_object_list(result, src=0)
    samples = result[0]

    worst = 0.0
    for prompt, s in zip(prompts, samples):
        tokens = torch.tensor([prompt + s["token_ids"]])
        batch = TrainBatch(tokens=tokens, response_mask=torch.ones_like(tokens, dtype=torch.float32),
                           advantages=torch.zeros(1))
        lp = policy.compute_logprobs(batch, micro_batch_size=1, temperature=1.0)[0, len(prompt):]
        worst = max(worst, (lp - torch.tensor(s["logprobs"])).abs().max().item())
    if sender:
        print(f"CHECK megatron_vs_server_logprob_max_diff {worst}", flush=True)
        with open(out_json, "w") as f:
            json.dump({"prompts": prompts, "samples": samples}, f)
    destroy_parallel()


if __name__ == "__main__":
    main()
