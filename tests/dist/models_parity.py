"""torchrun worker for tests/test_models_parity.py.

``ref HF_DIR OUT``  (1 process): the single-process TP=1/PP=1 policy on a fixed batch -- logprobs,
    entropy, one optimizer step -- checked against transformers' Qwen2 on the same weights plus
    torch.optim.AdamW, and saved as the reference for the layouts.
``layouts HF_DIR REF`` (4 processes): the same batch and step under TP2xDP2, PP2xDP2, TP2xPP2 and
    DP4 (plain and distributed optimizer), each compared with the reference.
Prints ``CHECK name value`` lines (max absolute differences unless named otherwise).
"""
import sys

import torch
import torch.distributed as dist

from igrpo_megatron.algorithms.losses import entropy_from_logits, policy_loss
from igrpo_megatron.batch import TrainBatch
from igrpo_megatron.models import Policy, destroy_parallel, initialize_parallel, load_hf_config
from igrpo_megatron.weights import iter_hf_weights
from tests.dist.common import check, tiny_config

TEMPERATURE = 0.7
B, T, MBS = 8, 16, 2


def make_config(hf_dir, tp=1, pp=1, dist_opt=False):
    return tiny_config(hf_dir, tp, pp, parallel={"use_distributed_optimizer": dist_opt},
                       train={"max_steps": 10, "micro_batch_size": MBS},
                       optim={"lr": 1e-4, "weight_decay": 0.1, "clip_grad": 1.0},
                       # the entropy bonus exercises the entropy gradient through the TP reductions
                       loss={"entropy_coef": 0.01}, rollout={"temperature": TEMPERATURE})


def make_batch(vocab):
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, vocab, (B, T), generator=g)
    mask = torch.zeros(B, T)
    for i in range(B):
        start = int(torch.randint(2, 7, (1,), generator=g))
        end = int(torch.randint(start + 2, T + 1, (1,), generator=g))
        mask[i, start:end] = 1
        tokens[i, end:] = 0  # right padding
    mask[B - 1] = 0  # an all-padding row: counts no sequence, adds nothing
    return TrainBatch(tokens=tokens, response_mask=mask, advantages=torch.randn(B, generator=g))


def loss_fn(cfg):
    def fn(logprobs, entropy, mb, d):
        return policy_loss(logprobs, mb.old_logprobs, mb.advantages, mb.response_mask, cfg.loss, entropy=entropy,
                           num_sequences=d["num_sequences"], num_tokens=d["num_tokens"])

    return fn


def exported(policy, use_grads=False):
    """HF-named full tensors (params, or main_grads when ``use_grads``) on rank 0."""
    if use_grads:
        with torch.no_grad():
            for p in policy.model_chunks[0].parameters():
                p.copy_(p.main_grad)
    return {name: t.clone().float() for name, t in iter_hf_weights(policy.model_chunks, policy.hf_cfg)}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), (sorted(a.keys() ^ b.keys()))
    return max((a[k] - b[k]).abs().max().item() for k in a)


def hf_reference_step(hf_dir, batch, cfg, lr, hf_cfg):
    """The same logprobs, loss and AdamW step in plain PyTorch on transformers' Qwen2 (eager attention)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32, attn_implementation="eager")
    logits = model(input_ids=batch.tokens).logits[..., : hf_cfg.vocab_size] / TEMPERATURE
    logp = torch.log_softmax(logits.float(), -1)
    lp = torch.nn.functional.pad(logp[:, :-1].gather(-1, batch.tokens[:, 1:, None]).squeeze(-1), (1, 0))
    ent = torch.nn.functional.pad(entropy_from_logits(logits)[:, :-1], (1, 0))
    mask = batch.response_mask
    loss, _ = policy_loss(lp, batch.old_logprobs, batch.advantages, mask, cfg.loss, entropy=ent,
                          num_sequences=(mask.sum(1) > 0).sum(), num_tokens=mask.sum())
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}  # clipped, like Megatron's main_grad
    o = cfg.optim
    decay = [p for p in model.parameters() if p.ndim >= 2]  # Megatron: no decay on biases and norms
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(o.adam_beta1, o.adam_beta2), eps=o.adam_eps)
    opt.step()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    return lp.detach(), ent.detach(), loss.item(), norm.item(), grads, params


def check_hand_written_backward():
    """vocab_parallel_logprobs' hand-written backward against autograd through log_softmax."""
    from igrpo_megatron.models import vocab_parallel_logprobs

    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(3, 5, 40, generator=g)).requires_grad_()
    targets = torch.randint(0, 37, (3, 5), generator=g)
    w_lp, w_ent = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    lp, ent = vocab_parallel_logprobs(logits, targets, vocab_size=37, temperature=TEMPERATURE)
    (lp * w_lp + ent * w_ent).sum().backward()
    ours = logits.grad.clone()
    logits.grad = None
    logp = torch.log_softmax(logits[..., :37] / TEMPERATURE, -1)
    ref_lp, ref_ent = logp.gather(-1, targets[..., None]).squeeze(-1), -(logp.exp() * logp).sum(-1)
    (ref_lp * w_lp + ref_ent * w_ent).sum().backward()
    check("fused_logprob_diff", (lp - ref_lp).abs().max())
    check("fused_entropy_diff", (ent - ref_ent).abs().max())
    check("fused_grad_diff", (ours - logits.grad).abs().max())
    check("fused_padded_grad_max", ours[..., 37:].abs().max())


def run_ref(hf_dir, out):
    cfg = make_config(hf_dir)
    initialize_parallel(cfg.parallel, seed=1)
    check_hand_written_backward()
    hf_cfg = load_hf_config(hf_dir)
    batch = make_batch(hf_cfg.vocab_size)
    policy = Policy(cfg, hf_cfg)
    lp, ent = policy.compute_logprobs_and_entropy(batch)
    batch.old_logprobs = lp
    metrics = policy.train_step(batch, loss_fn(cfg))
    params = exported(policy)
    grads = exported(policy, use_grads=True)  # overwrites the parameters: last use of the model
    hf_lp, hf_ent, hf_loss, hf_norm, hf_grads, hf_params = hf_reference_step(hf_dir, batch, cfg, metrics["lr"], hf_cfg)
    check("hf_logprob_diff", (lp - hf_lp).abs().max())
    check("hf_entropy_diff", (ent - hf_ent).abs().max())
    check("hf_loss_diff", abs(metrics["loss"] - hf_loss))
    check("hf_grad_norm_diff", abs(metrics["grad_norm"] - hf_norm))
    check("hf_grad_norm", hf_norm)
    check("hf_grad_diff", max_diff(grads, hf_grads))
    check("adamw_param_diff", max_diff(params, hf_params))
    check("adamw_param_change", max_diff(hf_params, _initial(hf_dir)))  # the step really moved them
    torch.save(dict(batch=vars(batch), lp=lp, ent=ent, metrics=metrics, grads=grads, params=params), out)


def _initial(hf_dir):
    from igrpo_megatron.weights import HFSafetensors

    with HFSafetensors(hf_dir) as src:
        return {n: src.get(n).float() for n in src.names()}


def run_layouts(hf_dir, ref_path):
    ref = torch.load(ref_path)
    hf_cfg = load_hf_config(hf_dir)
    full = TrainBatch(**ref["batch"])
    for tp, pp, dist_opt in [(2, 1, True), (1, 2, False), (2, 2, False), (1, 1, True)]:
        tag = f"tp{tp}pp{pp}" + ("_distopt" if dist_opt else "")
        cfg = make_config(hf_dir, tp, pp, dist_opt)
        info = initialize_parallel(cfg.parallel, seed=1)
        policy = Policy(cfg, hf_cfg)
        lp, ent = policy.compute_logprobs_and_entropy(full)
        check(f"{tag}_logprob_diff", (lp - ref["lp"]).abs().max())
        check(f"{tag}_entropy_diff", (ent - ref["ent"]).abs().max())
        rows = B // info.dp_size
        shard = full.select(slice(info.dp_rank * rows, (info.dp_rank + 1) * rows))
        metrics = policy.train_step(shard, loss_fn(cfg))
        check(f"{tag}_loss_diff", abs(metrics["loss"] - ref["metrics"]["loss"]))
        check(f"{tag}_grad_norm_diff", abs(metrics["grad_norm"] - ref["metrics"]["grad_norm"]))
        params = exported(policy)
        if dist.get_rank() == 0:
            check(f"{tag}_param_diff", max_diff(params, ref["params"]))
        if not dist_opt:  # the plain optimizer keeps the full reduced gradient on every rank
            grads = exported(policy, use_grads=True)
            if dist.get_rank() == 0:
                check(f"{tag}_grad_diff", max_diff(grads, ref["grads"]))
        destroy_parallel()


if __name__ == "__main__":
    mode, hf_dir, path = sys.argv[1:4]
    {"ref": run_ref, "layouts": run_layouts}[mode](hf_dir, path)
    destroy_parallel(destroy_process_group=True)
