"""The architecture registry: which families are registered, the error for any other, and every
registered family's name table round-tripping a real tiny HF checkpoint (no model, no processes)."""
import pytest
import torch

from igrpo_megatron.config import ConfigError
from igrpo_megatron.models.provider import load_hf_config, padded_vocab_size
from igrpo_megatron.demo.tiny import make_model
from igrpo_megatron.weights.arch import UnsupportedArchitecture, arch_spec, registered_model_types
from igrpo_megatron.weights.hf_io import HFSafetensors
from igrpo_megatron.weights.mapping import WeightMap, WeightMappingError, unshard

#: A tiny HF folder per registered family; a new family adds its own here (the test below fails until it does).
TINY_CHECKPOINTS = {
    "qwen2": lambda d: make_model(d, arch="qwen2", vocab_size=320, with_tokenizer=False),
    "llama": lambda d: make_model(d, arch="llama", tie_word_embeddings=True, vocab_size=321, with_tokenizer=False),
}


def test_registry_lists_the_families_and_names_them_for_an_unknown_type():
    assert {"qwen2", "llama"} <= set(registered_model_types())
    assert set(registered_model_types()) == set(TINY_CHECKPOINTS)
    assert arch_spec("llama").model_type == "llama" and arch_spec("qwen2").qkv_bias_default
    with pytest.raises(UnsupportedArchitecture) as e:
        arch_spec("mixtral", "model.hf_path=/m")
    # one error for both places a model_type is looked up: the model config and the weight map
    assert isinstance(e.value, ConfigError) and isinstance(e.value, WeightMappingError)
    assert str(e.value) == ("model.hf_path=/m: model_type 'mixtral' is not supported; registered: "
                            + ", ".join(registered_model_types()))
    assert "llama, qwen2" in str(e.value)


def _table_names(wmap: WeightMap, src: HFSafetensors, num_layers: int):
    """Every Megatron name of the table whose HF tensors the folder holds (biases only where the model has them)."""
    for key in wmap.table:
        for name in ([key.format(i) for i in range(num_layers)] if "{}" in key else [key]):
            if all(h in src.names() for h in wmap.hf_sources(name)):
                yield name


@pytest.mark.parametrize("model_type", sorted(TINY_CHECKPOINTS))
def test_name_table_round_trips(model_type, tmp_path):
    """HF -> Megatron full tensor -> HF gives back every tensor of the checkpoint under its own
    name, and the TP=2 shards read on import put back together to the same full tensor."""
    hf_dir = TINY_CHECKPOINTS[model_type](str(tmp_path))
    hf_cfg = load_hf_config(hf_dir)
    assert hf_cfg.model_type == model_type
    wmap = WeightMap(hf_cfg)
    rows = padded_vocab_size(hf_cfg.vocab_size, 2)
    back = set()
    with HFSafetensors(hf_dir) as src:
        names = list(_table_names(wmap, src, hf_cfg.num_layers))
        assert len(names) >= 3 + 6 * hf_cfg.num_layers  # embedding, final norm, output; >= 6 per layer
        for name in names:
            full = wmap.to_megatron_shard(name, src, rows, 1, 0)
            shards = [wmap.to_megatron_shard(name, src, rows // 2, 2, r) for r in range(2)]
            assert torch.equal(unshard(shards, wmap.split(name)), full), name
            if wmap.exported(name):
                for hf_name, tensor in wmap.to_hf(name, full):
                    assert torch.equal(tensor, src.get(hf_name)), (name, hf_name)
                    back.add(hf_name)
        assert back == {n for n in src.names() if not wmap.optional_hf(n)}
