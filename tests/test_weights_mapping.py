"""The weight mapping's pure tensor functions, against hand-built layouts (no model, no processes)."""
from types import SimpleNamespace

import pytest
import torch

from igrpo_megatron.weights.export import bucketize
from igrpo_megatron.weights.hf_io import HFSafetensors, copy_non_weight_files, save_safetensors_shards
from igrpo_megatron.weights.mapping import (
    COLUMN, COLUMN_PER_HALF, REPLICATED, ROW, AttentionDims, Layout, Rule, TPSplit, WeightMap, WeightMappingError,
    shard, to_hf, to_megatron, unshard)


def _cfg(**kw):
    base = dict(model_type="qwen2", num_attention_heads=4, num_kv_heads=2, head_dim=1, vocab_size=5,
                tie_word_embeddings=False)
    return SimpleNamespace(**{**base, **kw})


def test_qkv_is_fused_per_query_group():
    dims = AttentionDims(num_heads=4, num_kv_heads=2, head_dim=1)
    q, k, v = torch.tensor([0., 1, 2, 3]), torch.tensor([10., 11]), torch.tensor([20., 21])
    fused = to_megatron(Layout.QKV, [q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)], dims)
    # group 0: q heads 0,1 then k0, v0; group 1: q heads 2,3 then k1, v1
    assert fused.squeeze(1).tolist() == [0, 1, 10, 20, 2, 3, 11, 21]
    bias = to_megatron(Layout.QKV, [q, k, v], dims)  # 1-D bias takes the same path
    assert bias.tolist() == [0, 1, 10, 20, 2, 3, 11, 21]
    back = to_hf(Layout.QKV, bias, dims)
    assert [t.tolist() for t in back] == [q.tolist(), k.tolist(), v.tolist()]


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (8, 2)])
def test_qkv_round_trip_every_gqa_ratio(heads, kv_heads):
    dims = AttentionDims(heads, kv_heads, head_dim=3)
    q, k, v = torch.randn(heads * 3, 5), torch.randn(kv_heads * 3, 5), torch.randn(kv_heads * 3, 5)
    fused = to_megatron(Layout.QKV, [q, k, v], dims)
    assert fused.shape == ((heads + 2 * kv_heads) * 3, 5)
    for got, want in zip(to_hf(Layout.QKV, fused, dims), (q, k, v)):
        assert torch.equal(got, want)


def test_fc1_is_split_per_half_across_tp():
    gate, up = torch.tensor([0., 1, 2, 3]), torch.tensor([10., 11, 12, 13])
    full = to_megatron(Layout.STACK, [gate, up], AttentionDims(1, 1, 1))
    assert full.tolist() == [0, 1, 2, 3, 10, 11, 12, 13]
    pieces = [shard(full, COLUMN_PER_HALF, 2, r) for r in range(2)]
    assert [p.tolist() for p in pieces] == [[0, 1, 10, 11], [2, 3, 12, 13]]
    assert torch.equal(unshard(pieces, COLUMN_PER_HALF), full)
    assert [t.tolist() for t in to_hf(Layout.STACK, full, AttentionDims(1, 1, 1), n_hf=2)] == [gate.tolist(), up.tolist()]


def test_column_row_and_replicated_splits():
    full = torch.arange(24.).reshape(4, 6)
    assert shard(full, COLUMN, 2, 1).tolist() == full[2:].tolist()
    assert shard(full, ROW, 3, 2).tolist() == full[:, 4:].tolist()
    assert shard(full, REPLICATED, 4, 3) is full
    for split, tp in ((COLUMN, 2), (ROW, 3), (COLUMN_PER_HALF, 2)):
        assert torch.equal(unshard([shard(full, split, tp, r) for r in range(tp)], split), full)


def test_vocab_padding_added_on_import_stripped_on_export():
    table = torch.randn(333, 4)
    padded = to_megatron(Layout.VOCAB, [table], AttentionDims(1, 1, 1), rows=384)
    assert padded.shape == (384, 4) and torch.equal(padded[:333], table) and not padded[333:].any()
    assert torch.equal(to_hf(Layout.VOCAB, padded, AttentionDims(1, 1, 1), vocab_size=333)[0], table)


def test_names_for_local_and_te_specs_and_layer_indices():
    wmap = WeightMap(_cfg())
    _, names = wmap.rule("decoder.layers.7.self_attention.linear_qkv.bias")
    assert names == tuple(f"model.layers.7.self_attn.{p}_proj.bias" for p in "qkv")
    local = wmap.rule("decoder.layers.3.input_layernorm.weight")[1]
    fused = wmap.rule("decoder.layers.3.self_attention.linear_qkv.layer_norm_weight")[1]
    assert local == fused == ("model.layers.3.input_layernorm.weight",)
    assert wmap.rule("decoder.layers.12.mlp.linear_fc1.layer_norm_weight")[1] == (
        "model.layers.12.post_attention_layernorm.weight",)
    assert wmap.rule("decoder.layers.0.mlp.linear_fc1.weight")[1] == (
        "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight")
    assert wmap.split("decoder.layers.0.self_attention.linear_proj.weight") == ROW
    assert wmap.exported("output_layer.weight") and wmap.hf_sources("output_layer.weight") == ("lm_head.weight",)
    with pytest.raises(WeightMappingError, match="decoder.layers.0.mlp.router.weight"):
        wmap.rule("decoder.layers.0.mlp.router.weight")


def test_tied_embeddings_export_once_and_import_from_embed_tokens():
    wmap = WeightMap(_cfg(model_type="llama", tie_word_embeddings=True))
    assert not wmap.exported("output_layer.weight")
    assert wmap.hf_sources("output_layer.weight") == ("model.embed_tokens.weight",)
    assert wmap.optional_hf("lm_head.weight") and not WeightMap(_cfg()).optional_hf("lm_head.weight")


def test_unknown_architecture_is_named():
    with pytest.raises(WeightMappingError, match="'mixtral'"):
        WeightMap(_cfg(model_type="mixtral"))


def test_bucketize_bounds_bucket_bytes():
    pairs = [(f"t{i}", torch.zeros(n)) for i, n in enumerate([10, 10, 30, 100, 5])]  # fp32: 4 bytes each
    buckets = list(bucketize(pairs, bucket_bytes=160))
    assert [[n for n, _ in b] for b in buckets] == [["t0", "t1"], ["t2"], ["t3"], ["t4"]]


def test_sharded_writer_and_lazy_reader(tmp_path):
    tensors = {f"w{i}": torch.randn(64, 16).to(torch.bfloat16 if i % 2 else torch.float32) for i in range(5)}
    index = save_safetensors_shards(tensors.items(), str(tmp_path), max_shard_bytes=5000)
    files = sorted(set(index["weight_map"].values()))
    assert len(files) == 5 and files[0] == "model-00001-of-00005.safetensors"
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    with HFSafetensors(str(tmp_path)) as src:
        assert src.names() == set(tensors)
        for name, t in tensors.items():
            assert torch.equal(src.get(name), t)
        with pytest.raises(KeyError, match="'nope'"):
            src.get("nope")
    (tmp_path / "config.json").write_text("{}")
    assert copy_non_weight_files(str(tmp_path), str(tmp_path / "copy")) == ["config.json"]


def test_reader_names_a_folder_without_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        HFSafetensors(str(tmp_path))


@pytest.mark.parametrize("tp", [1, 2])
def test_sliced_import_equals_shard_of_full_tensor(tmp_path, tp):
    """Import reads only each rank's HF slices; that must equal cutting the full Megatron tensor."""
    cfg = _cfg(num_attention_heads=8, num_kv_heads=2, head_dim=3, vocab_size=333)
    h, ffn, padded = 8, 10, 336
    g = torch.Generator().manual_seed(0)
    hf = {
        "model.embed_tokens.weight": torch.randn(333, h, generator=g),
        "lm_head.weight": torch.randn(333, h, generator=g),
        "model.norm.weight": torch.randn(h, generator=g),
        "model.layers.0.input_layernorm.weight": torch.randn(h, generator=g),
        "model.layers.0.post_attention_layernorm.weight": torch.randn(h, generator=g),
        "model.layers.0.self_attn.o_proj.weight": torch.randn(h, 24, generator=g),
        "model.layers.0.mlp.gate_proj.weight": torch.randn(ffn, h, generator=g),
        "model.layers.0.mlp.up_proj.weight": torch.randn(ffn, h, generator=g),
        "model.layers.0.mlp.down_proj.weight": torch.randn(h, ffn, generator=g),
    }
    for p, rows in (("q", 24), ("k", 6), ("v", 6)):
        hf[f"model.layers.0.self_attn.{p}_proj.weight"] = torch.randn(rows, h, generator=g)
        hf[f"model.layers.0.self_attn.{p}_proj.bias"] = torch.randn(rows, generator=g)
    save_safetensors_shards(hf.items(), str(tmp_path), max_shard_bytes=2000)
    wmap = WeightMap(cfg)
    names = [k.replace("{}", "0") for k in wmap.table]
    with HFSafetensors(str(tmp_path)) as src:
        for name in names:
            rule, sources = wmap.rule(name)
            full = to_megatron(rule.layout, [hf[s] for s in sources], wmap.dims, rows=padded)
            for rank in range(tp):
                want = shard(full, rule.split, tp, rank)
                got = wmap.to_megatron_shard(name, src, want.shape[0], tp, rank)
                assert torch.equal(got, want), (name, rank)
        assert src.used == set(hf)


def test_unequal_blocks_are_split_separately():
    """A fused tensor of unequal blocks (Mamba's in_proj = [z, x, B, C, dt]) gives each rank its
    piece of every block, like linear_fc1's halves."""
    split = TPSplit(0, sizes=(4, 4, 2))
    full = torch.arange(10.)
    pieces = [shard(full, split, 2, r) for r in range(2)]
    assert [p.tolist() for p in pieces] == [[0, 1, 4, 5, 8], [2, 3, 6, 7, 9]]
    assert torch.equal(unshard(pieces, split), full)
    assert TPSplit(0, parts=2).blocks(8) == [4, 4] and split.blocks(10) == [4, 4, 2]


@pytest.mark.parametrize("split", [TPSplit(0, sizes=(8, 8, 4, 4, 2)), COLUMN_PER_HALF])
def test_sliced_import_of_one_fused_hf_tensor(tmp_path, split):
    """One HF tensor holding several blocks is read block by block, equal to the shard of the full tensor."""
    fused = torch.randn(26 if split.sizes else 8, 3, generator=torch.Generator().manual_seed(1))
    save_safetensors_shards([("backbone.layers.0.mixer.in_proj.weight", fused)], str(tmp_path))
    name = "decoder.layers.0.mixer.in_proj.weight"
    base = WeightMap(_cfg()).table
    wmap = WeightMap(_cfg(), table={**base, "decoder.layers.{}.mixer.in_proj.weight": Rule(
        ("backbone.layers.{}.mixer.in_proj.weight",), Layout.COPY, split)})
    with HFSafetensors(str(tmp_path)) as src:
        for rank in range(2):
            want = shard(fused, split, 2, rank)
            assert torch.equal(wmap.to_megatron_shard(name, src, want.shape[0], 2, rank), want)
