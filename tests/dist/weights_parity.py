"""torchrun worker: HF -> Megatron import, logits parity with transformers, and the streaming
export round trip, for every case folder given, at every layout that fits the world size.

Usage: weights_parity.py LAYOUTS [--negative] CASE_DIR... where LAYOUTS is e.g. "1x1" or "2x1,1x2" (TPxPP).
Prints ``CHECK <metric>_<case>_tp<T>pp<P> <value>`` lines from global rank 0 (see test_weights_parity.py).
"""
import sys
from dataclasses import replace

import torch
import torch.distributed as dist

from igrpo_megatron.config import ModelConfig, ParallelConfig
from igrpo_megatron.models.parallel import destroy_parallel, initialize_parallel
from igrpo_megatron.models.provider import build_model, load_hf_config
from igrpo_megatron.weights import HFSafetensors, WeightMap, export_hf_weights, load_hf_weights
from igrpo_megatron.weights.mapping import COLUMN, Layout
from tests.dist.common import check, logits_everywhere

BATCH, SEQ = 2, 12


def hf_logits(case_dir, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(case_dir, torch_dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def build_and_load(case_dir, tp, pp, weight_map=None):
    hf_cfg = load_hf_config(case_dir)
    par = ParallelConfig(tp=tp, pp=pp)
    initialize_parallel(par, seed=7)
    model = build_model(hf_cfg, ModelConfig(dtype="fp32", transformer_impl="local"), par)
    load_hf_weights([model], case_dir, hf_cfg, weight_map=weight_map)
    return hf_cfg, model.eval()


def run_case(case_dir, tp, pp, ids, reference):
    tag = f"{case_dir.rstrip('/').split('/')[-1]}_tp{tp}pp{pp}"
    hf_cfg, model = build_and_load(case_dir, tp, pp)
    with torch.no_grad():
        logits = logits_everywhere(model, ids, hf_cfg.vocab_size)
    if dist.get_rank() == 0:
        check(f"logits_diff_{tag}", (logits - reference).abs().max().item())
        check(f"logits_scale_{tag}", reference.abs().max().item())
    # round trip through the streaming export, with small buckets so several are used
    exported, buckets = {}, 0
    for bucket in export_hf_weights([model], hf_cfg, bucket_bytes=64 << 10):
        buckets += 1
        assert sum(t.numel() * t.element_size() for _, t in bucket) <= 64 << 10 or len(bucket) == 1
        for name, tensor in bucket:
            assert name not in exported, name
            exported[name] = tensor.clone()
    if dist.get_rank() == 0:
        with HFSafetensors(case_dir) as src:
            names_ok = set(exported) == {n for n in src.names() if not WeightMap(hf_cfg).optional_hf(n)}
            worst = max((src.get(n) != t).sum().item() if src.get(n).shape == t.shape else 10**9
                        for n, t in exported.items())
        check(f"export_names_match_{tag}", int(names_ok))
        check(f"export_mismatched_elems_{tag}", worst)
        check(f"export_buckets_{tag}", buckets)
    destroy_parallel()


def run_negative_controls(case_dir, ids, reference):
    """Deliberately wrong tables must be caught: a naive [Q;K;V] qkv layout breaks logits parity
    (at TP1, where the rank holds several query groups), and a naive dim-0 split of fc1 (instead of
    [gate_r; up_r] per rank) breaks the exported gate/up tensors at TP2."""
    hf_cfg = load_hf_config(case_dir)
    base = WeightMap(hf_cfg).table
    qkv, fc1 = "decoder.layers.{}.self_attention.linear_qkv.weight", "decoder.layers.{}.mlp.linear_fc1.weight"
    naive_qkv = WeightMap(hf_cfg, table={**base, qkv: replace(base[qkv], layout=Layout.STACK)})
    _, model = build_and_load(case_dir, 1, 1, weight_map=naive_qkv)
    with torch.no_grad():
        logits = logits_everywhere(model, ids, hf_cfg.vocab_size)
    if dist.get_rank() == 0:
        check("negative_naive_qkv_tp1", (logits - reference).abs().max().item())
    destroy_parallel()

    naive_fc1 = WeightMap(hf_cfg, table={**base, fc1: replace(base[fc1], split=COLUMN)})
    _, model = build_and_load(case_dir, 2, 1)
    exported = dict(t for bucket in export_hf_weights([model], hf_cfg, weight_map=naive_fc1) for t in bucket)
    if dist.get_rank() == 0:
        with HFSafetensors(case_dir) as src:
            wrong = sum((src.get(n) != t).sum().item() for n, t in exported.items() if "mlp.gate_proj" in n)
        check("negative_naive_fc1_split_tp2_wrong_gate_elems", wrong)
    destroy_parallel()


def main(layouts, case_dirs, negative):
    for case_dir in case_dirs:
        vocab = load_hf_config(case_dir).vocab_size
        ids = torch.randint(0, vocab, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))  # same on all ranks
        reference = hf_logits(case_dir, ids) if dist.get_rank() == 0 else None
        for tp, pp in layouts:
            run_case(case_dir, tp, pp, ids, reference)
        if negative and case_dir == case_dirs[0]:
            run_negative_controls(case_dir, ids, reference)
    dist.barrier()


if __name__ == "__main__":
    args = sys.argv[1:]
    negative = "--negative" in args
    args = [a for a in args if a != "--negative"]
    layouts = [tuple(int(x) for x in spec.split("x")) for spec in args[0].split(",")]
    initialize_parallel(ParallelConfig(), seed=0)  # the process group (gloo on CPU) for the reference step
    main(layouts, args[1:], negative)
    destroy_parallel(destroy_process_group=True)
