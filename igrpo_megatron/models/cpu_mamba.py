"""Megatron's Mamba layers without ``mamba_ssm`` (CPU machines, or GPUs without the kernels).

megatron-core 0.16.1's ``MambaMixer`` takes three things from ``mamba_ssm`` and refuses to build
without it; its ``MambaStack`` hard-codes Transformer Engine's ``TENorm`` for the final norm; and
0.16.1 ships only a TE stack spec. :func:`enable_mamba_fallbacks` fills those gaps with plain torch,
and only where the real thing is missing, so nodes with ``mamba_ssm`` and TE run NVIDIA's kernels
unchanged:

* :func:`ssd_chunk_scan`: the Mamba-2 SSD scan (``mamba_chunk_scan_combined``'s contract), chunked
  like the Triton kernel: quadratic attention-like products inside a chunk, a linear recurrence
  over chunk states between chunks. A sequential scan gives the same numbers ~4x slower here.
* :class:`GatedRMSNorm`: ``mamba_ssm``'s grouped gated RMSNorm, ``w * groupRMS(y * silu(z))`` (the
  gate before the norm, one RMS per group of ``d_inner / n_groups`` channels, as Nemotron-H and
  transformers' NemotronH define it), with Megatron's TP-sharded checkpoint entry.
* ``mamba_block.TENorm`` -> Megatron's torch norm, when Transformer Engine does not import.
* :func:`local_mamba_stack_spec`: the stack spec with Megatron's own linears, norms and attention.

The fused memory-efficient path (``mamba_split_conv1d_scan_combined``) has no torch counterpart;
the provider turns it off (``use_mamba_mem_eff_path``) unless :func:`fused_mamba_path_available`.
``causal_conv1d`` needs nothing: Megatron falls back to ``nn.Conv1d`` itself.
"""
from __future__ import annotations

import importlib.util
from typing import Optional

import torch
import torch.nn.functional as F

def mamba_ssm_available() -> bool:
    return importlib.util.find_spec("mamba_ssm") is not None


def fused_mamba_path_available() -> bool:
    """mamba_ssm's fused in_proj -> conv -> scan kernel also calls causal_conv1d's CUDA op."""
    return mamba_ssm_available() and importlib.util.find_spec("causal_conv1d") is not None


def _segment_sum(a: torch.Tensor) -> torch.Tensor:
    """``out[..., i, j] = a[..., j+1] + ... + a[..., i]`` for ``i >= j`` (log-decay from step j to i), -inf above."""
    steps = a.shape[-1]
    cum = a.cumsum(-1)
    diff = cum[..., :, None] - cum[..., None, :]
    causal = torch.ones(steps, steps, dtype=torch.bool, device=a.device).tril()
    return diff.masked_fill(~causal, float("-inf"))


def ssd_chunk_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False,
                   dt_limit=(0.0, float("inf")), return_final_states=False, seq_idx=None, cu_seqlens=None,
                   return_varlen_states=False, initial_states=None, **_unused):
    """The Mamba-2 selective state-space scan, ``y_t = C_t . h_t + D x_t`` with
    ``h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T``, computed chunk by chunk in fp32.

    Shapes as ``mamba_ssm``: ``x [b, l, h, p]``, ``dt [b, l, h]``, ``A [h]``, ``B, C [b, l, g, n]``
    (heads share their group's B/C), ``D [h]`` or ``[h, p]``, ``z [b, l, h, p]`` (``y * silu(z)``),
    ``initial_states [b, h, p, n]``. Returns ``y`` in ``x``'s dtype, and the final state when asked.
    """
    if seq_idx is not None or cu_seqlens is not None or return_varlen_states:
        raise NotImplementedError("packed sequences need mamba_ssm's kernels; the pure-torch SSD scan "
                                  "takes one sequence per batch row")
    b, length, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    if tuple(dt_limit) != (0.0, float("inf")):
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    # Zero dt on the padding steps: they neither decay the state nor add to it.
    pad = -length % chunk_size
    xf, Bf, Cf = (t.float() for t in (x, B, C))
    if pad:
        xf, Bf, Cf = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (xf, Bf, Cf))
        dt = F.pad(dt, (0, 0, 0, pad))
    chunks = (length + pad) // chunk_size
    xc = xf.reshape(b, chunks, chunk_size, h, p)
    Bc = Bf.reshape(b, chunks, chunk_size, g, n).repeat_interleave(h // g, dim=3)
    Cc = Cf.reshape(b, chunks, chunk_size, g, n).repeat_interleave(h // g, dim=3)
    dtc = dt.reshape(b, chunks, chunk_size, h)
    a = (dtc * A.float()).permute(0, 3, 1, 2)                        # [b, h, c, T] log-decay per step
    a_cum = a.cumsum(-1)
    xdt = xc * dtc[..., None]                                        # dt_t x_t

    # within a chunk: y_i = sum_{j<=i} (C_i . B_j) exp(a_{j+1..i}) dt_j x_j
    decay = torch.exp(_segment_sum(a))                               # [b, h, c, T, T]
    scores = torch.einsum("bclhn,bcshn->bhcls", Cc, Bc) * decay
    y = torch.einsum("bhcls,bcshp->bclhp", scores, xdt)

    # each chunk's own contribution to the state at its end
    to_end = torch.exp(a_cum[..., -1:] - a_cum)                      # [b, h, c, T]
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc, to_end, xdt)
    # between chunks: state entering chunk c, from the initial state and chunks before c
    state = (x.new_zeros((b, h, p, n), dtype=torch.float32) if initial_states is None
             else initial_states.float())
    chunk_decay = torch.exp(a_cum[..., -1])                          # [b, h, c]
    entering = []
    for c in range(chunks):
        entering.append(state)
        state = state * chunk_decay[:, :, c, None, None] + chunk_states[:, c]
    entering = torch.stack(entering, dim=1)                          # [b, c, h, p, n]
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, entering, torch.exp(a_cum))

    y = y.reshape(b, chunks * chunk_size, h, p)[:, :length]
    if D is not None:
        y = y + xf[:, :length] * (D.float()[:, None] if D.dim() == 1 else D.float())
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(x.dtype)
    return (y, state) if return_final_states else y


class GatedRMSNorm(torch.nn.Module):
    """``weight * groupRMS(x * silu(z))``: ``mamba_ssm.ops.triton.layernorm_gated.RMSNorm`` with
    ``norm_before_gate=False`` (the only form Megatron's mixer builds), computed in fp32."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, group_size: Optional[int] = None,
                 norm_before_gate: bool = False, device=None, dtype=None):
        super().__init__()
        if norm_before_gate:
            raise NotImplementedError("GatedRMSNorm implements the gate before the norm only (norm_before_gate=False)")
        self.eps = eps
        self.group_size = group_size or hidden_size
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        y = x.float()
        if z is not None:
            y = y * F.silu(z.float())
        groups = y.unflatten(-1, (-1, self.group_size))
        groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)
        return (groups.flatten(-2) * self.weight.float()).to(x.dtype)

    def sharded_state_dict(self, prefix: str = "", sharded_offsets=(), metadata=None):
        """The weight split over TP along dim 0, as Megatron's ``ExtendedRMSNorm`` saves it."""
        from megatron.core import parallel_state as ps
        from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

        return make_sharded_tensors_for_checkpoint(
            self.state_dict(prefix="", keep_vars=True), prefix, {"weight": 0}, sharded_offsets,
            tp_group=ps.get_tensor_model_parallel_group(), dp_cp_group=(metadata or {}).get("dp_cp_group"))


def enable_mamba_fallbacks(transformer_engine: bool) -> bool:
    """Install the torch stand-ins where ``mamba_ssm`` (and, for the final norm, TE) is missing.

    Idempotent; returns True when the pure-torch scan is in use. Call before building a MambaModel.
    """
    import megatron.core.ssm.mamba_block as mamba_block
    import megatron.core.ssm.mamba_mixer as mamba_mixer
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    if not transformer_engine:
        mamba_block.TENorm = WrappedTorchNorm
    if mamba_ssm_available():
        return False
    mamba_mixer.HAVE_MAMBA_SSM = True
    mamba_mixer.RMSNormGated = mamba_mixer.ExtendedRMSNorm = GatedRMSNorm
    mamba_mixer.mamba_chunk_scan_combined = ssd_chunk_scan
    return True


def local_mamba_stack_spec(d_conv: int, chunk_size: int):
    """A MambaStack spec of Megatron's own modules (no Transformer Engine).

    Parameter names per layer type: Mamba ``norm.weight`` + ``mixer.*``; attention
    ``input_layernorm`` + ``self_attention.linear_qkv`` / ``linear_proj``; MLP ``pre_mlp_layernorm``
    + ``mlp.linear_fc1`` / ``linear_fc2``; ``decoder.final_norm`` after the last layer.
    """
    from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
    from megatron.core.ssm.mamba_block import MambaStack, MambaStackSubmodules
    from megatron.core.ssm.mamba_layer import MambaLayer, MambaLayerSubmodules
    from megatron.core.ssm.mamba_mixer import MambaMixer, MambaMixerSubmodules
    from megatron.core.ssm.mlp_layer import MLPLayer
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.mlp import MLP, MLPSubmodules
    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.torch_norm import WrappedTorchNorm
    from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

    mixer = ModuleSpec(module=MambaMixer, params={"d_conv": d_conv, "chunk_size": chunk_size},
                       submodules=MambaMixerSubmodules(in_proj=ColumnParallelLinear, out_proj=RowParallelLinear))
    attention = ModuleSpec(module=SelfAttention, params={"attn_mask_type": AttnMaskType.causal},
                           submodules=SelfAttentionSubmodules(linear_qkv=ColumnParallelLinear,
                                                              core_attention=DotProductAttention,
                                                              linear_proj=RowParallelLinear))
    mlp = ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=ColumnParallelLinear,
                                                          linear_fc2=RowParallelLinear))
    return ModuleSpec(module=MambaStack, submodules=MambaStackSubmodules(
        mamba_layer=ModuleSpec(module=MambaLayer, submodules=MambaLayerSubmodules(
            norm=WrappedTorchNorm, mixer=mixer, mamba_bda=get_bias_dropout_add)),
        attention_layer=ModuleSpec(module=TransformerLayer, submodules=TransformerLayerSubmodules(
            input_layernorm=WrappedTorchNorm, self_attention=attention, self_attn_bda=get_bias_dropout_add)),
        mlp_layer=ModuleSpec(module=MLPLayer, submodules=TransformerLayerSubmodules(
            pre_mlp_layernorm=WrappedTorchNorm, mlp=mlp, mlp_bda=get_bias_dropout_add)),
    ))
