"""torchrun worker (2 ranks) for tests/test_nemotron_h.py: the Megatron hybrid built by the provider
from a tiny NemotronH checkpoint, against transformers' own NemotronH on the same weights (fp32).

At TP=1 (x DP2), TP=2 and PP=2: logits and gradients of a mean token log-likelihood, and the
exported HF tensors; at TP=2 again with activation recompute. transformers clamps the SSM step at ``time_step_min``; Megatron and vLLM do
not, so the reference runs with ``time_step_limit = (0, inf)`` and the clamped difference is
reported separately. Then the negative controls (a plain dim-0 split of in_proj at TP=2, the gated
norm over all channels instead of per group at TP=1, the norm before the gate at TP=2) and a checkpoint saved at
TP=2 that loads at TP=1 and PP=2.

Usage: nemotron_h_parity.py HF_DIR CKPT_DIR. Prints ``CHECK name value`` from global rank 0.
"""
import sys
import types
from dataclasses import replace

import torch
import torch.distributed as dist
import torch.nn.functional as F

from igrpo_megatron.checkpoint import load_checkpoint, save_checkpoint
from igrpo_megatron.config import ModelConfig, ParallelConfig
from igrpo_megatron.models.cpu_mamba import GatedRMSNorm
from igrpo_megatron.models.logprobs import token_logprobs
from igrpo_megatron.models.parallel import destroy_parallel, initialize_parallel
from igrpo_megatron.models.provider import build_model, load_hf_config
from igrpo_megatron.weights import HFSafetensors, WeightMap, iter_hf_weights, load_hf_weights
from igrpo_megatron.weights.mapping import COLUMN, global_parameters

BATCH, SEQ = 2, 24  # 24 tokens = 3 scan chunks of 8


def check(name, value):
    if dist.get_rank() == 0:
        print(f"CHECK {name} {float(value):.6e}", flush=True)


class TensorSource:
    """``HFSafetensors``' read interface over in-memory tensors (the reference's gradients)."""

    def __init__(self, tensors):
        self.tensors = tensors

    def shape(self, name):
        return list(self.tensors[name].shape)

    def get(self, name, dim=None, start=0, stop=None):
        t = self.tensors[name]
        return t if dim is None else t.narrow(dim, start, (t.shape[dim] if stop is None else stop) - start)


def reference(hf_dir, ids):
    """transformers' logits with the dt clamp off and on, and the gradients (clamp off) by on-disk name."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        clamped = model.eval()(ids).logits
    for layer in model.model.layers:
        if hasattr(layer.mixer, "time_step_limit"):
            layer.mixer.time_step_limit = (0.0, float("inf"))
    logits = model.train()(ids).logits
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    (-lp.mean()).backward()
    grads = {n.replace("model.", "backbone.", 1): p.grad for n, p in model.named_parameters()}
    return logits.detach(), clamped, grads


def build(hf_dir, tp, pp, weight_map=None, load=True, recompute=False):
    hf_cfg = load_hf_config(hf_dir)
    par = ParallelConfig(tp=tp, pp=pp)
    initialize_parallel(par, seed=3)
    model_cfg = ModelConfig(hf_path=hf_dir, dtype="fp32", transformer_impl="local", recompute_activations=recompute)
    model = build_model(hf_cfg, model_cfg, par)
    if load:
        load_hf_weights([model], hf_dir, hf_cfg, weight_map=weight_map)
    return hf_cfg, model


def forward_backward(model, ids, hf_vocab, backward):
    """Full-vocabulary logits on global rank 0 (through the pipeline schedule) and, with
    ``backward``, each rank's parameter gradients of ``-mean(log p(next token))``."""
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    out = {}

    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        logits = model(input_ids=batch, position_ids=torch.arange(SEQ).expand(BATCH, -1), attention_mask=None)

        def loss(output):
            out["logits"] = output.detach()
            lp, _ = token_logprobs(output, batch, vocab_size=hf_vocab)
            return -lp[:, 1:].mean(), {}

        return logits, loss

    get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter([ids]), model=[model],
                                num_microbatches=1, seq_length=SEQ, micro_batch_size=BATCH,
                                forward_only=not backward)
    last = dist.get_process_group_ranks(ps.get_pipeline_model_parallel_group())[-1]
    full = torch.empty(BATCH, SEQ, hf_vocab)
    if ps.is_pipeline_last_stage():
        pieces = [torch.empty_like(out["logits"]) for _ in range(ps.get_tensor_model_parallel_world_size())]
        dist.all_gather(pieces, out["logits"].contiguous(), group=ps.get_tensor_model_parallel_group())
        full = torch.cat(pieces, -1)[..., :hf_vocab].contiguous()
    # rank 0's last stage (its pipeline group's last rank) hands them to rank 0
    if last != 0 and ps.get_data_parallel_rank() == 0 and ps.get_tensor_model_parallel_rank() == 0:
        if dist.get_rank() == last:
            dist.send(full, dst=0)
        elif dist.get_rank() == 0:
            dist.recv(full, src=last)
    return full


def worst_relative_grad(model, hf_cfg, grads):
    """max over parameters of max|grad - reference| / max|reference|, all ranks."""
    from megatron.core import parallel_state as ps

    wmap, src = WeightMap(hf_cfg), TensorSource(grads)
    tp, rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    worst = torch.zeros(())
    for name, param in global_parameters([model]):
        want = wmap.to_megatron_shard(name, src, param.shape[0], tp, rank)
        worst = torch.maximum(worst, (param.grad - want).abs().max() / want.abs().max().clamp_min(1e-12))
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return worst


def exported_mismatches(model, hf_cfg, hf_dir):
    """Elements of the exported HF tensors that differ from the checkpoint's (-1: names differ)."""
    exported = {n: t.clone() for n, t in iter_hf_weights([model], hf_cfg)}
    if dist.get_rank() != 0:
        return 0
    with HFSafetensors(hf_dir) as src:
        if set(exported) != src.names():
            return -1
        return sum((src.get(n) != t).sum().item() for n, t in exported.items())


def norm_then_gate(self, x, z=None):
    """The wrong order: normalise per group, then gate."""
    groups = x.float().unflatten(-1, (-1, self.group_size))
    y = (groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)).flatten(-2) * self.weight
    return (y * F.silu(z.float())).to(x.dtype)


def main(hf_dir, ckpt_dir):
    initialize_parallel(ParallelConfig(), seed=3)  # the process group, for check()
    vocab = load_hf_config(hf_dir).vocab_size
    ids = torch.randint(0, vocab, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    ref_logits, ref_clamped, ref_grads = reference(hf_dir, ids)
    check("logits_scale", ref_logits.abs().max())
    check("hf_clamp_effect", (ref_logits - ref_clamped).abs().max())

    for tp, pp in ((1, 1), (2, 1), (1, 2)):
        tag = f"tp{tp}pp{pp}"
        hf_cfg, model = build(hf_dir, tp, pp)
        logits = forward_backward(model, ids, vocab, backward=True)
        check(f"logits_diff_{tag}", (logits - ref_logits).abs().max())
        check(f"logits_diff_vs_clamped_hf_{tag}", (logits - ref_clamped).abs().max())
        check(f"grad_rel_diff_{tag}", worst_relative_grad(model, hf_cfg, ref_grads))
        check(f"export_mismatches_{tag}", exported_mismatches(model, hf_cfg, hf_dir))
        if (tp, pp) == (2, 1):
            save_checkpoint(ckpt_dir, 0, [model])
        destroy_parallel()

    # activation recompute: the same gradients, each mixer run twice (forward, then in backward)
    hf_cfg, model = build(hf_dir, 2, 1, recompute=True)
    calls = []
    for m in model.modules():
        if type(m).__name__ in ("MambaMixer", "SelfAttention", "MLP"):
            m.register_forward_hook(lambda *_: calls.append(1))
    logits = forward_backward(model, ids, vocab, backward=True)
    check("logits_diff_tp2pp1_recompute", (logits - ref_logits).abs().max())
    check("grad_rel_diff_tp2pp1_recompute", worst_relative_grad(model, hf_cfg, ref_grads))
    check("mixer_calls_per_layer_tp2pp1_recompute", len(calls) / hf_cfg.num_layers)
    destroy_parallel()

    # negative controls: each must move the logits far beyond the parity tolerance
    hf_cfg = load_hf_config(hf_dir)
    base = WeightMap(hf_cfg).table
    in_proj = "decoder.layers.{}.mixer.in_proj.weight"
    plain = WeightMap(hf_cfg, table={**base, in_proj: replace(base[in_proj], split=COLUMN)})
    _, model = build(hf_dir, 2, 1, weight_map=plain)
    with torch.no_grad():
        check("negative_plain_in_proj_split_tp2", (forward_backward(model, ids, vocab, False) - ref_logits).abs().max())
    destroy_parallel()
    # at TP=1 (each rank holds both Mamba groups; at TP=2 a rank's one group is all its channels)
    for wrong, tp in (("norm_without_groups", 1), ("norm_before_gate", 2)):
        _, model = build(hf_dir, tp, 1)
        for m in model.modules():
            if isinstance(m, GatedRMSNorm):
                if wrong == "norm_without_groups":
                    m.group_size = m.weight.numel()
                else:
                    m.forward = types.MethodType(norm_then_gate, m)
        with torch.no_grad():
            check(f"negative_{wrong}_tp{tp}", (forward_backward(model, ids, vocab, False) - ref_logits).abs().max())
        destroy_parallel()

    # the TP=2 checkpoint into fresh (randomly initialised) models at other layouts
    for tp, pp in ((1, 1), (1, 2)):
        hf_cfg, model = build(hf_dir, tp, pp, load=False)
        load_checkpoint(ckpt_dir, [model], load_optimizer=False, load_rng=False)
        check(f"ckpt_tp2_to_tp{tp}pp{pp}_export_mismatches", exported_mismatches(model, hf_cfg, hf_dir))
        destroy_parallel()


if __name__ == "__main__":
    main(*sys.argv[1:3])
    destroy_parallel(destroy_process_group=True)
