"""torchrun worker (2 processes) for tests/test_models_provider.py: several layouts and model options
in one launch. Prints ``CHECK name value`` lines.

argv: QWEN2_DIR (untied, qkv bias) LLAMA_DIR (tied embeddings, no bias)
"""
import sys

import torch
import torch.distributed as dist

from igrpo_megatron.algorithms.losses import sft_loss
from igrpo_megatron.batch import TrainBatch
from igrpo_megatron.config import ModelConfig, ParallelConfig
from igrpo_megatron.models import Policy, build_model, destroy_parallel, initialize_parallel, load_hf_config, unwrap
from igrpo_megatron.weights import iter_hf_weights
from tests.dist.common import check, tiny_config


def sft(logprobs, entropy, mb, d):
    return sft_loss(logprobs, mb.response_mask, d["num_tokens"])


def batch(vocab, rows=4, seq=12):
    g = torch.Generator().manual_seed(3)
    mask = torch.zeros(rows, seq)
    mask[:, 4:] = 1
    return TrainBatch(tokens=torch.randint(0, vocab, (rows, seq), generator=g), response_mask=mask,
                      advantages=torch.zeros(rows))


def config(hf_dir, tp=1, pp=1, **model):
    return tiny_config(hf_dir, tp, pp, model=model, train={"max_steps": 20}, optim={"lr": 1e-3, "warmup_ratio": 0.0})


def shapes(hf):
    """Random-init builds: local logits width, padded vocabulary, layers per stage, grads reach all params."""
    for tp, pp in [(2, 1), (1, 2)]:
        par = ParallelConfig(tp=tp, pp=pp)
        info = initialize_parallel(par, seed=3)
        model = build_model(hf, ModelConfig(dtype="fp32"), par, wrap_ddp=True)
        if info.is_first_stage and info.is_last_stage:
            out = model(input_ids=torch.randint(0, hf.vocab_size, (2, 8)),
                        position_ids=torch.arange(8).expand(2, -1), attention_mask=None)
            out.square().mean().backward()
            check(f"tp{tp}pp{pp}_local_vocab", out.shape[-1])
            check(f"tp{tp}pp{pp}_params_with_grad_frac",
                  sum(p.main_grad.abs().sum().item() > 0 for p in model.parameters()) / len(list(model.parameters())))
        check(f"tp{tp}pp{pp}_padded_vocab", unwrap(model).padded_vocab_size)
        check(f"tp{tp}pp{pp}_layers_per_stage", len(unwrap(model).decoder.layers))
        destroy_parallel()


def recompute_and_bf16(qwen_dir):
    """Gradient checkpointing leaves the step unchanged; a bf16 policy trains (loss goes down)."""
    params = {}
    for recompute in (False, True):
        cfg = config(qwen_dir, tp=2, recompute_activations=recompute)
        initialize_parallel(cfg.parallel, seed=1)
        policy = Policy(cfg, load_hf_config(qwen_dir))
        policy.train_step(batch(300), sft)
        params[recompute] = {n: t.clone() for n, t in iter_hf_weights(policy.model_chunks, policy.hf_cfg)}
        destroy_parallel()
    if dist.get_rank() == 0:
        check("recompute_param_diff", max((params[True][k] - params[False][k]).abs().max().item() for k in params[True]))
    cfg = config(qwen_dir, tp=2, dtype="bf16")
    initialize_parallel(cfg.parallel, seed=1)
    policy = Policy(cfg, load_hf_config(qwen_dir))
    losses = [policy.train_step(batch(300), sft)["loss"] for _ in range(4)]
    check("bf16_first_loss", losses[0])
    check("bf16_last_loss", losses[-1])
    check("bf16_param_is_bf16", next(policy.model_chunks[0].parameters()).dtype == torch.bfloat16)
    destroy_parallel()


def lr_schedule(qwen_dir):
    """The learning rate each of 10 train steps used: warm-up, then cosine decay to lr * min_lr_ratio."""
    cfg = config(qwen_dir, tp=2)
    cfg.optim.lr, cfg.optim.warmup_ratio, cfg.optim.min_lr_ratio = 1e-3, 0.2, 0.1
    initialize_parallel(cfg.parallel, seed=1)
    policy = Policy(cfg, load_hf_config(qwen_dir), total_steps=10)
    check("tp2_weight_norm", policy.weight_norm())  # the layer norms are on both TP ranks: counted once
    for k in range(1, 11):
        check(f"lr_step{k}", policy.train_step(batch(300), sft)["lr"])
    destroy_parallel()


def tied_llama_pp2(llama_dir):
    """Tied embeddings split over two pipeline stages (the embedding-group gradient all-reduce)."""
    results = {}
    for pp in (1, 2):
        cfg = config(llama_dir, pp=pp)
        initialize_parallel(cfg.parallel, seed=1)
        policy = Policy(cfg, load_hf_config(llama_dir))
        b = batch(321)
        lp = policy.compute_logprobs(b)
        check(f"llama_tied_pp{pp}_weight_norm", policy.weight_norm())  # the tied embedding counted once
        if pp == 2:  # the reference model: same layout and weights, no gradients or optimizer
            reference = Policy(cfg, load_hf_config(llama_dir), frozen=True)
            check("reference_weight_norm", reference.weight_norm())
            check("reference_logprob_diff", (reference.compute_logprobs(b) - lp).abs().max())
            check("reference_has_optimizer", reference.optimizer is not None)
            del reference
        losses = [policy.train_step(b, sft, micro_batch_size=2)["loss"] for _ in range(2)]
        params = {n: t.clone() for n, t in iter_hf_weights(policy.model_chunks, policy.hf_cfg)}
        results[pp] = (lp, losses, params)
        destroy_parallel()
    (lp1, l1, p1), (lp2, l2, p2) = results[1], results[2]
    check("llama_tied_pp2_logprob_diff", (lp1 - lp2).abs().max())
    check("llama_tied_pp2_second_loss_diff", abs(l1[1] - l2[1]))
    if dist.get_rank() == 0:
        check("llama_tied_pp2_param_diff", max((p1[k] - p2[k]).abs().max().item() for k in p1))


if __name__ == "__main__":
    qwen_dir, llama_dir = sys.argv[1:3]
    shapes(load_hf_config(qwen_dir))
    recompute_and_bf16(qwen_dir)
    lr_schedule(qwen_dir)
    tied_llama_pp2(llama_dir)
    destroy_parallel(destroy_process_group=True)
