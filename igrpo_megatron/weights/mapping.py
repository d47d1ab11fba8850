"""The one Megatron <-> Hugging Face weight mapping: names and tensor layouts, per architecture.

A Megatron parameter is related to HF tensors in two independent steps, and each step is one
small pure function here:

1. **layout** (HF tensors <-> the Megatron *full* tensor, i.e. what TP=1 would hold):
   - ``COPY``: the same tensor under another name (norms, o_proj, down_proj);
   - ``QKV``: q/k/v are fused into ``linear_qkv`` *per query group*: for each KV head, its
     ``num_heads / num_kv_heads`` query heads, then its key head, then its value head
     (``[q_g0.., k_g0, v_g0, q_g1.., k_g1, v_g1, ...]``), for the weight and the bias alike;
   - ``STACK``: ``linear_fc1 = [gate_proj; up_proj]`` along dim 0;
   - ``VOCAB``: the embedding / lm_head rows, padded with zero rows up to Megatron's TP-divisible
     vocabulary on import, the padding stripped on export.
2. **TP split** (the Megatron full tensor <-> this rank's shard): column-parallel layers are cut
   along dim 0, row-parallel ones along dim 1, norms are replicated. ``linear_fc1`` is cut *per
   half*: rank r holds ``[gate_r; up_r]``, not rows ``r/tp`` of ``[gate; up]`` (a naive dim-0 split
   of the fused tensor mixes gate and up rows and breaks SwiGLU). ``linear_qkv``'s contiguous dim-0
   split is right because each rank owns whole query groups (``num_kv_heads % tp == 0``). Blocks
   may also be unequal (``TPSplit(0, sizes=...)``, e.g. Mamba's fused ``in_proj = [z, x, B, C, dt]``).
   Export gathers the shards and applies :func:`unshard`; import never builds the full tensor: it
   reads each HF source's matching slice and applies the layout per rank
   (:meth:`WeightMap.to_megatron_shard`, checked equal to :func:`shard` of the full tensor).

Each family's table (``weight_table`` of its :class:`~igrpo_megatron.weights.arch.ArchSpec`)
names Megatron parameters as the bare model at TP=1/PP=1 would, with a *global* layer index;
pipeline stages translate their local layer numbers before looking up (:func:`global_parameters`).
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import torch


class Layout(enum.Enum):
    COPY = "copy"
    QKV = "qkv"
    STACK = "stack"
    VOCAB = "vocab"


@dataclass(frozen=True)
class TPSplit:
    """How a Megatron full tensor is cut across tensor-parallel ranks.

    ``dim=None`` means replicated. Otherwise the tensor stacks blocks along ``dim`` and every block
    is split separately: ``parts`` equal blocks (``linear_fc1 = [gate; up]``), or blocks of the
    full-tensor ``sizes`` given when they differ (a Mamba ``in_proj = [z, x, B, C, dt]``).
    """

    dim: Optional[int]
    parts: int = 1
    sizes: Optional[tuple[int, ...]] = None

    def blocks(self, length: int) -> list[int]:
        """Full-tensor sizes of the blocks along ``dim`` of a tensor ``length`` long there."""
        if self.sizes is None:
            return [length // self.parts] * self.parts
        assert sum(self.sizes) == length, (self.sizes, length)
        return list(self.sizes)


REPLICATED = TPSplit(None)
COLUMN = TPSplit(0)
ROW = TPSplit(1)
COLUMN_PER_HALF = TPSplit(0, parts=2)


@dataclass(frozen=True)
class Rule:
    """One Megatron parameter: the HF tensors it is made of (``{}`` is the layer index), how."""

    hf: tuple[str, ...]
    layout: Layout
    split: TPSplit


#: The Megatron names every family's table has (a tied output layer is stored as the embedding).
EMBEDDING, OUTPUT = "embedding.word_embeddings.weight", "output_layer.weight"
_LAYER_INDEX = re.compile(r"^decoder\.layers\.(\d+)\.")


class WeightMappingError(ValueError):
    """A model / checkpoint pair the mapping cannot relate; the message names the tensor."""


# ------------------------------------------------------------------------------ TP split


def shard(full: torch.Tensor, split: TPSplit, tp_size: int, tp_rank: int) -> torch.Tensor:
    """This TP rank's piece of a Megatron full tensor (a view where possible): the definition of
    the TP layout, inverse of :func:`unshard`."""
    if split.dim is None or tp_size == 1:
        return full
    blocks = full.split(split.blocks(full.shape[split.dim]), dim=split.dim)
    pieces = [b.chunk(tp_size, dim=split.dim)[tp_rank] for b in blocks]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=split.dim)


def unshard(shards: Sequence[torch.Tensor], split: TPSplit) -> torch.Tensor:
    """The Megatron full tensor from all TP ranks' pieces, in rank order (inverse of :func:`shard`)."""
    if split.dim is None or len(shards) == 1:
        return shards[0]
    local = [b // len(shards) for b in split.blocks(shards[0].shape[split.dim] * len(shards))]
    per_rank = [s.split(local, dim=split.dim) for s in shards]
    return torch.cat([piece[p] for p in range(len(local)) for piece in per_rank], dim=split.dim)


# ------------------------------------------------------------------------------ layouts


@dataclass(frozen=True)
class AttentionDims:
    num_heads: int
    num_kv_heads: int
    head_dim: int

    @property
    def q_per_group(self) -> int:
        return self.num_heads // self.num_kv_heads


def to_megatron(layout: Layout, hf: Sequence[torch.Tensor], dims: AttentionDims,
                rows: Optional[int] = None) -> torch.Tensor:
    """HF tensors -> the Megatron full tensor. ``rows``: the padded vocabulary (``VOCAB`` only)."""
    if layout is Layout.COPY:
        return hf[0]
    if layout is Layout.STACK:
        return torch.cat(list(hf), dim=0)
    if layout is Layout.QKV:
        q, k, v = hf
        ng, hd, rest = dims.num_kv_heads, dims.head_dim, q.shape[1:]
        grouped = [q.reshape(ng, dims.q_per_group * hd, *rest), k.reshape(ng, hd, *rest), v.reshape(ng, hd, *rest)]
        return torch.cat(grouped, dim=1).reshape(-1, *rest)
    if layout is Layout.VOCAB:
        table = hf[0]
        assert rows is not None and rows >= table.shape[0], (rows, table.shape)
        if rows == table.shape[0]:
            return table
        return torch.cat([table, table.new_zeros(rows - table.shape[0], *table.shape[1:])])
    raise AssertionError(layout)


def to_hf(layout: Layout, full: torch.Tensor, dims: AttentionDims, vocab_size: Optional[int] = None,
          n_hf: int = 1) -> list[torch.Tensor]:
    """The Megatron full tensor -> its HF tensors, in the rule's order (inverse of :func:`to_megatron`).

    Results are contiguous; a ``COPY`` result may alias ``full``.
    """
    if layout is Layout.COPY:
        return [full.contiguous()]
    if layout is Layout.STACK:
        return [t.contiguous() for t in full.chunk(n_hf, dim=0)]
    if layout is Layout.QKV:
        ng, hd, rest = dims.num_kv_heads, dims.head_dim, full.shape[1:]
        grouped = full.reshape(ng, (dims.q_per_group + 2) * hd, *rest)
        q, k, v = grouped.split([dims.q_per_group * hd, hd, hd], dim=1)
        return [q.reshape(dims.num_heads * hd, *rest).contiguous(),
                k.reshape(ng * hd, *rest).contiguous(), v.reshape(ng * hd, *rest).contiguous()]
    if layout is Layout.VOCAB:
        assert vocab_size is not None and vocab_size <= full.shape[0], (vocab_size, full.shape)
        return [full[:vocab_size].contiguous()]
    raise AssertionError(layout)


# ------------------------------------------------------------------------------ the model-level map


class WeightMap:
    """The mapping for one HF config: its family's table, looked up by global Megatron name, plus the dims it needs.

    ``hf_cfg`` is :class:`igrpo_megatron.weights.arch.HFModelConfig` (``load_hf_config``).
    ``table`` overrides the family's table (tests use it for a deliberately wrong layout).
    """

    def __init__(self, hf_cfg, table: Optional[Mapping[str, Rule]] = None):
        from igrpo_megatron.weights.arch import arch_spec  # arch imports this module's Rule

        spec = arch_spec(hf_cfg.model_type)
        self.table = spec.weight_table(hf_cfg) if table is None else table
        self.ignored_hf_suffixes = spec.ignored_hf_suffixes
        self.dims = AttentionDims(hf_cfg.num_attention_heads, hf_cfg.num_kv_heads, hf_cfg.head_dim)
        self.vocab_size = hf_cfg.vocab_size
        self.tied = hf_cfg.tie_word_embeddings
        # HF stores tied embeddings once, under the embedding's name
        self.embedding_hf = self.table[EMBEDDING].hf[0]
        self.output_hf = self.table[OUTPUT].hf[0]

    def rule(self, name: str) -> tuple[Rule, tuple[str, ...]]:
        """The rule for a global Megatron parameter name and its concrete HF names."""
        m = _LAYER_INDEX.match(name)
        key = _LAYER_INDEX.sub("decoder.layers.{}.", name) if m else name
        rule = self.table.get(key)
        if rule is None:
            raise WeightMappingError(f"Megatron parameter {name!r} has no HF counterpart in the weight mapping")
        layer = m.group(1) if m else None
        return rule, tuple(h.format(layer) for h in rule.hf)

    def exported(self, name: str) -> bool:
        """False for the last stage's copy of a tied output layer (HF stores it once, as embed_tokens)."""
        return not (self.tied and name == OUTPUT)

    def hf_sources(self, name: str) -> tuple[str, ...]:
        """HF tensors to read for ``name`` on import (a tied output layer reads embed_tokens)."""
        if self.tied and name == OUTPUT:
            return (self.embedding_hf,)
        return self.rule(name)[1]

    def to_hf(self, name: str, full: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        rule, hf_names = self.rule(name)
        return list(zip(hf_names, to_hf(rule.layout, full, self.dims, self.vocab_size, len(hf_names))))

    def to_megatron_shard(self, name: str, src, local_rows: int, tp_size: int, tp_rank: int) -> torch.Tensor:
        """This TP rank's shard of Megatron parameter ``name``, built from only the HF slices it needs.

        ``src`` is an :class:`~igrpo_megatron.weights.hf_io.HFSafetensors`: ``src.get(hf_name, dim,
        start, stop)`` reads an HF tensor or its ``[start:stop)`` slice along ``dim``, and
        ``src.shape(hf_name)`` its shape. ``local_rows`` is dim 0 of the shard (it fixes the padded vocabulary).
        Equal to ``shard(to_megatron(full HF tensors), split, tp_size, tp_rank)``: each rank owns
        whole query groups and a matching chunk of gate and of up, so slicing every HF source
        along the split dim and applying the layout with per-rank head counts gives the shard.
        """
        rule, _ = self.rule(name)
        sources, split = self.hf_sources(name), rule.split
        if split.dim is None or tp_size == 1:
            return to_megatron(rule.layout, [src.get(h) for h in sources], self.dims, local_rows)
        if rule.layout is Layout.VOCAB:  # rows [r*R, (r+1)*R) of the padded table; past vocab_size: zeros
            start, stop = (min(i * local_rows, self.vocab_size) for i in (tp_rank, tp_rank + 1))
            return to_megatron(Layout.VOCAB, [src.get(sources[0], 0, start, stop)], self.dims, local_rows)
        # a stacked tensor must be split per stacked block, or slicing each source would not match
        assert rule.layout is not Layout.STACK or split.parts == len(sources), (name, split)
        pieces = []
        for h in sources:
            length = src.shape(h)[split.dim]
            offset = 0  # a lone source may hold several blocks (a fused HF tensor): slice each
            for block in (split.blocks(length) if len(sources) == 1 else [length]):
                size = block // tp_size
                pieces.append(src.get(h, split.dim, offset + tp_rank * size, offset + (tp_rank + 1) * size))
                offset += block
        if len(pieces) > len(sources):
            pieces = [torch.cat(pieces, dim=split.dim)]
        local_dims = AttentionDims(self.dims.num_heads // tp_size, self.dims.num_kv_heads // tp_size, self.dims.head_dim)
        return to_megatron(rule.layout, pieces, local_dims)

    def split(self, name: str) -> TPSplit:
        return self.rule(name)[0].split

    def optional_hf(self, hf_name: str) -> bool:
        """HF tensors an import may leave unread: recomputed buffers, a tied lm_head saved anyway."""
        return hf_name.endswith(self.ignored_hf_suffixes) or (self.tied and hf_name == self.output_hf)



def unwrap(model):
    """The bare Megatron model inside the DDP / Float16Module wrappers: the one whose parameter
    names (no ``module.`` prefixes) the weight tables use."""
    while hasattr(model, "module"):
        model = model.module
    return model


def global_parameters(model_chunks) -> list[tuple[str, torch.nn.Parameter]]:
    """This rank's parameters under their TP=1/PP=1 names: wrappers removed (:func:`unwrap`) and
    each pipeline stage's local layer index replaced by the global one (``layer_number - 1``)."""
    out = []
    for chunk in map(unwrap, model_chunks):
        global_index = {j: layer.layer_number - 1 for j, layer in enumerate(chunk.decoder.layers)}
        for name, param in chunk.named_parameters():
            m = _LAYER_INDEX.match(name)
            if m:
                name = f"decoder.layers.{global_index[int(m.group(1))]}.{name[m.end():]}"
            out.append((name, param))
    return out
