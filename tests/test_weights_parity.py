"""HF -> Megatron import at TP1, TP2, PP2 and TP2 x PP2: logits equal transformers' (fp32, eager
attention) and the streaming export gives every HF tensor back bit for bit.

Cases cover odd vocabularies that need TP padding (333, 301), GQA ratios 1, 2 and 4, and tied and
untied embeddings, with 4 layers so pipeline stages hold layers with a non-zero offset.
"""
import os

import pytest

from igrpo_megatron.demo.tiny import make_model
from torchrun_util import checks, run_torchrun

WORKER = os.path.join(os.path.dirname(__file__), "dist", "weights_parity.py")
CASES = {
    "qwen2_gqa2": dict(arch="qwen2", vocab_size=333, num_heads=4, num_kv_heads=2),
    "llama_gqa1_tied": dict(arch="llama", vocab_size=333, num_heads=4, num_kv_heads=4, tie_word_embeddings=True),
    "qwen2_gqa4_tied": dict(arch="qwen2", vocab_size=301, num_heads=8, num_kv_heads=2, tie_word_embeddings=True),
    "llama_gqa4": dict(arch="llama", vocab_size=333, num_heads=8, num_kv_heads=2),
}
TOL = 1e-5


@pytest.fixture(scope="module")
def case_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights_cases")
    return [make_model(str(root / name), hidden_size=64, num_layers=4, intermediate_size=96, with_tokenizer=False,
                       init_std=0.1, seed=i, **kw) for i, (name, kw) in enumerate(CASES.items())]


def _assert_parity(found, layouts):
    for name in CASES:
        for tp, pp in layouts:
            tag = f"{name}_tp{tp}pp{pp}"
            assert found[f"logits_scale_{tag}"] > 0.1, tag  # the comparison is not between near-zero logits
            assert found[f"logits_diff_{tag}"] <= TOL, (tag, found[f"logits_diff_{tag}"])
            assert found[f"export_names_match_{tag}"] == 1, tag
            assert found[f"export_mismatched_elems_{tag}"] == 0, tag
            assert found[f"export_buckets_{tag}"] > 1, tag


def test_tp1_tp2_pp2_parity_round_trip_and_negative_controls(case_dirs):
    # 1x1 runs on two ranks, i.e. with a second data-parallel replica that must stay out of the export
    found = checks(run_torchrun(WORKER, 2, ["1x1,2x1,1x2", "--negative", *case_dirs]))
    _assert_parity(found, [(1, 1), (2, 1), (1, 2)])
    # a naive [Q;K;V] fused layout must break parity (guards the per-group interleave) ...
    assert found["negative_naive_qkv_tp1"] > 100 * TOL
    # ... and a plain dim-0 split of fc1 (it must be [gate_r; up_r] per rank) must garble the export
    assert found["negative_naive_fc1_split_tp2_wrong_gate_elems"] > 0


def test_tp2_x_pp2_parity_round_trip(case_dirs):
    found = checks(run_torchrun(WORKER, 4, ["2x2", *case_dirs], timeout=600))
    _assert_parity(found, [(2, 2)])
