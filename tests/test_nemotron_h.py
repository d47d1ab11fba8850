"""Nemotron-H (weights/nemotron_h.py): config reading, the TP rules and the block-wise split of the
Mamba projections, and parity with transformers' own NemotronH under real torchrun/gloo."""
import json
import os

import pytest
import torch

from igrpo_megatron.config import ConfigError
from igrpo_megatron.models.provider import check_layout, load_hf_config
from igrpo_megatron.weights import HFSafetensors, WeightMap
from igrpo_megatron.weights.mapping import shard, unshard
from nemotron_h_fixtures import make_tiny_nemotron_h
from torchrun_util import REPO, checks, run_torchrun

WORKER = os.path.join(REPO, "tests/dist/nemotron_h_parity.py")
TOL = 1e-4


@pytest.fixture(scope="module")
def tiny_nemotron_h(tmp_path_factory):
    return make_tiny_nemotron_h(str(tmp_path_factory.mktemp("tiny_nemotron_h")))


def _with_config(tmp_path, base_dir, **changes):
    with open(os.path.join(base_dir, "config.json")) as f:
        raw = json.load(f)
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    (tmp_path / "config.json").write_text(json.dumps(raw))
    return str(tmp_path)


def test_both_pattern_spellings_read_alike_and_moe_is_refused(tiny_nemotron_h, tmp_path):
    saved = load_hf_config(tiny_nemotron_h)  # transformers 5.19 writes layers_block_type
    assert saved.pattern == "M*M-M-" and saved.num_layers == 6 and saved.rope_theta == 0.0
    assert (saved.mamba_num_heads, saved.mamba_head_dim, saved.mamba_num_groups, saved.ssm_state_size,
            saved.conv_kernel, saved.chunk_size, saved.d_inner) == (8, 16, 2, 16, 4, 8, 128)
    assert (saved.num_attention_heads, saved.num_kv_heads, saved.head_dim, saved.ffn_hidden_size) == (4, 2, 32, 256)
    assert saved.rms_norm_eps == 1e-5 and not saved.tie_word_embeddings
    (tmp_path / "hub").mkdir()
    hub = load_hf_config(_with_config(tmp_path / "hub", tiny_nemotron_h, layers_block_type=None,
                                      hybrid_override_pattern="M*M-M-"))
    assert hub == saved
    for i, (changes, message) in enumerate([
            (dict(hybrid_override_pattern="M*ME-"), r"MoE layers \('E' in the hybrid pattern\) are not supported"),
            (dict(layers_block_type=["linear_attention", "moe"]), "MoE layers"),
            (dict(layers_block_type=None), "needs hybrid_override_pattern or layers_block_type"),
            (dict(use_bias=True), "use_bias=true"),
            (dict(mlp_hidden_act="silu"), "mlp_hidden_act='silu' is not supported")]):
        folder = tmp_path / f"bad{i}"
        folder.mkdir()
        with pytest.raises(ConfigError, match=message):
            load_hf_config(_with_config(folder, tiny_nemotron_h, **changes))


def test_tp_must_divide_mamba_heads_groups_and_kv_heads(tiny_nemotron_h, tmp_path):
    cfg = load_hf_config(tiny_nemotron_h)  # 8 Mamba heads in 2 groups, 4 heads / 2 kv heads, 6 layers
    check_layout(cfg, 2, 3)
    with pytest.raises(ConfigError, match="parallel.tp=4 does not divide the model's 2 Mamba groups"):
        check_layout(cfg, 4, 1)
    with pytest.raises(ConfigError, match="parallel.pp=4 does not divide the model's 6 layers"):
        check_layout(cfg, 1, 4)
    (tmp_path / "g4").mkdir()
    four_groups = load_hf_config(_with_config(tmp_path / "g4", tiny_nemotron_h, n_groups=4))
    with pytest.raises(ConfigError, match="parallel.tp=4 does not divide the model's 2 key/value heads"):
        check_layout(four_groups, 4, 1)


def test_in_proj_and_conv_split_per_block_and_import_reads_only_slices(tiny_nemotron_h):
    """Rank r of TP=2 holds [z_r; x_r; B_r; C_r; dt_r] of in_proj and [x_r; B_r; C_r] of conv1d."""
    cfg = load_hf_config(tiny_nemotron_h)
    wmap = WeightMap(cfg)
    blocks = {"in_proj.weight": (128, 128, 32, 32, 8), "conv1d.weight": (128, 32, 32), "conv1d.bias": (128, 32, 32)}
    with HFSafetensors(tiny_nemotron_h) as src:
        for param, sizes in blocks.items():
            name = f"decoder.layers.2.mixer.{param}"
            full = src.get(f"backbone.layers.2.mixer.{param}")
            split = wmap.split(name)
            pieces = [shard(full, split, 2, r) for r in range(2)]
            for r, piece in enumerate(pieces):
                want = torch.cat([b.chunk(2)[r] for b in full.split(list(sizes))])
                assert torch.equal(piece, want), (param, r)
                assert torch.equal(wmap.to_megatron_shard(name, src, piece.shape[0], 2, r), want), (param, r)
            assert torch.equal(unshard(pieces, split), full)
            assert not torch.equal(pieces[0], full.chunk(2)[0])  # a plain dim-0 split is something else


@pytest.fixture(scope="module")
def parity(tiny_nemotron_h, tmp_path_factory):
    ckpt = str(tmp_path_factory.mktemp("nemotron_h_ckpt"))
    return checks(run_torchrun(WORKER, 2, [tiny_nemotron_h, ckpt], timeout=1200))


@pytest.mark.parametrize("layout", ["tp1pp1", "tp2pp1", "tp1pp2"])
def test_logits_gradients_and_export_match_transformers(parity, layout):
    assert parity["logits_scale"] > 2.0  # logits of a few units, so 1e-4 is a tight bound
    assert parity[f"logits_diff_{layout}"] <= TOL
    assert parity[f"grad_rel_diff_{layout}"] <= 1e-4
    assert parity[f"export_mismatches_{layout}"] == 0  # HF -> Megatron -> HF bit-exact


def test_activation_recompute_reruns_every_layer_and_keeps_the_gradients(parity):
    assert parity["mixer_calls_per_layer_tp2pp1_recompute"] == 2.0
    assert parity["logits_diff_tp2pp1_recompute"] <= TOL
    assert parity["grad_rel_diff_tp2pp1_recompute"] <= 1e-4


def test_transformers_dt_clamp_is_what_separates_it_from_megatron(parity):
    """transformers clamps the SSM step at time_step_min (1e-3); three heads of the tiny model step
    ~5e-5, so with the clamp on the reference moves by several times the parity tolerance."""
    assert 2e-4 <= parity["hf_clamp_effect"] <= 1e-3
    for layout in ("tp1pp1", "tp2pp1", "tp1pp2"):
        assert parity[f"logits_diff_vs_clamped_hf_{layout}"] >= 2 * TOL


@pytest.mark.parametrize("control", ["plain_in_proj_split_tp2", "norm_without_groups_tp1", "norm_before_gate_tp2"])
def test_negative_controls_break_parity(parity, control):
    assert parity[f"negative_{control}"] > 100 * TOL


@pytest.mark.parametrize("layout", ["tp1pp1", "tp1pp2"])
def test_checkpoint_saved_at_tp2_loads_at_other_layouts(parity, layout):
    assert parity[f"ckpt_tp2_to_{layout}_export_mismatches"] == 0
