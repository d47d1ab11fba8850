"""``igrpo-train --dry-run``: the layout and a per-GPU memory plan of a run, from its config and the
model's ``config.json`` alone (no weights, no GPU), so that a bad layout or a plan that
cannot fit is found before the job waits in the queue.

Where ``config.json`` comes from (:func:`find_hf_config`): ``model.hf_path`` itself when it is a
local folder or file; else the Hugging Face cache; else the copy shipped with the recipes
(``recipes/hf_configs/<hub name>/config.json``, architecture only); else the hub.

The plan is an estimate of the peak on one training GPU, term by term, each with its formula:

- parameters, gradients, optimizer states: Megatron's bytes per parameter for mixed precision
  with fp32 gradient buffers (megatron-core docs, "Distributed Optimizer", table of bytes per
  parameter: 18 for bf16, 6 + 12/d with the distributed optimizer over d data-parallel ranks; 16,
  8 + 8/d for fp32). Our DDP reduces gradients in fp32 (models/provider.py).
- activations: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
  Models" (arXiv 2205.05198), section 4: the bytes each layer keeps for its backward, counted
  tensor by tensor, with this project's differences: flash attention keeps no s x s score matrix
  (Dao et al. 2022), dropout is 0 (no masks), SwiGLU keeps three ffn-wide tensors, GQA shrinks K
  and V. With tensor parallelism the norm inputs and the copies entering QKV / fc1 stay whole
  unless sequence parallelism splits them (their eq. 2 vs eq. 3). Full recompute keeps one
  layer input per layer plus one layer's activations (their section 4.2). Pipeline stage 1 of
  a 1F1B schedule holds PP micro-batches in flight (their section 4.2.3).
- logits: ``models/logprobs.py`` holds, per token of a micro-batch and vocabulary shard, at the
  forward's peak the bf16 logits, an fp32 copy and the fp32 softmax (10 bytes); in the backward
  the saved softmax, an fp32 gradient and its bf16 cast (10 bytes), plus an fp32 entropy term
  when ``loss.entropy_coef != 0`` (14).
- reference model: bf16 weights only (frozen, forward without a graph), when ``loss.kl_beta > 0``.
- a fixed reserve for the CUDA context, NCCL buffers and allocator fragmentation: an
  assumption (:data:`RESERVE_GIB`), not derived.

On the rollout nodes vLLM takes ``rollout.gpu_memory_utilization`` of each GPU: weights
(bf16 / rollout TP), an activation reserve for its profiling run (assumed :data:`VLLM_RESERVE_GIB`),
and the rest is KV cache (and Mamba state), reported as sequences of ``rollout.max_model_len``.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

from igrpo_megatron.config import Config, ConfigError

GIB = 1 << 30
RESERVE_GIB = 4.0
VLLM_RESERVE_GIB = 2.0
SHIPPED_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "hf_configs")

# bytes per parameter on one GPU: (weights, gradient buffer, optimizer states before sharding)
_BYTES_PER_PARAM = {"bf16": (2, 4, 12), "fp16": (2, 4, 12), "fp32": (4, 4, 8)}


def find_hf_config(hf_path: str) -> tuple[dict, str]:
    """``config.json`` of ``model.hf_path`` and where it was read from (see the module docstring)."""
    candidates = [hf_path if os.path.isfile(hf_path) else os.path.join(hf_path, "config.json")]
    if not os.path.exists(hf_path):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(hf_path, "config.json")
            candidates.append(cached if isinstance(cached, str) else "")
        except Exception:  # noqa: BLE001 - not a valid repo id: the shipped copy or the hub decide
            pass
        candidates.append(os.path.join(SHIPPED_CONFIGS, hf_path, "config.json"))
    for path in candidates:
        if path and os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return json.load(f), path
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(hf_path, "config.json")
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one clear message
        raise ConfigError(f"model.hf_path={hf_path}: no config.json locally, in the HF cache or in "
                          f"recipes/hf_configs, and the hub failed ({type(e).__name__}); give a local "
                          f"HF model folder") from None
    with open(path, encoding="utf-8") as f:
        return json.load(f), path


@dataclass(frozen=True)
class Shape:
    """The sizes the plan needs, read from a qwen2 / llama / nemotron_h ``config.json``.
    ``kinds`` has one letter per layer, Nemotron-H style: M Mamba-2, * attention, - MLP; a
    qwen2 / llama layer is attention + MLP, written "*-"."""

    model_type: str
    vocab: int
    hidden: int
    kinds: str
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    gated_mlp: bool
    qkv_bias: bool
    tied: bool
    mamba_heads: int = 0
    mamba_head_dim: int = 0
    groups: int = 0
    state: int = 0
    conv_kernel: int = 0

    @classmethod
    def from_hf(cls, raw: dict) -> "Shape":
        t = raw.get("model_type")
        heads = raw["num_attention_heads"]
        common = dict(model_type=t, vocab=raw["vocab_size"], hidden=raw["hidden_size"], heads=heads,
                      kv_heads=raw.get("num_key_value_heads") or heads,
                      head_dim=raw.get("head_dim") or raw["hidden_size"] // heads, ffn=raw["intermediate_size"],
                      tied=bool(raw.get("tie_word_embeddings", False)))
        if t in ("qwen2", "llama"):
            return cls(kinds="*-" * raw["num_hidden_layers"], gated_mlp=True,
                       qkv_bias=bool(raw.get("attention_bias", t == "qwen2")), **common)
        if t == "nemotron_h":
            return cls(kinds=raw["hybrid_override_pattern"], gated_mlp=False, qkv_bias=bool(raw.get("attention_bias")),
                       mamba_heads=raw["mamba_num_heads"], mamba_head_dim=raw["mamba_head_dim"],
                       groups=raw["n_groups"], state=raw["ssm_state_size"], conv_kernel=raw["conv_kernel"], **common)
        raise ConfigError(f"model_type {t!r}: the dry run knows qwen2, llama and nemotron_h")

    @property
    def layers(self) -> int:
        """Transformer blocks as Megatron counts them (a qwen2 layer is one block, a Nemotron-H letter one)."""
        return len(self.kinds) // 2 if self.model_type in ("qwen2", "llama") else len(self.kinds)

    @property
    def mamba_inner(self) -> int:
        return self.mamba_heads * self.mamba_head_dim

    def params(self, kind: str) -> tuple[int, int]:
        """(TP-sharded, replicated) parameters of one sub-layer of ``kind``, its norm included."""
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        if kind == "*":
            return h * (q + 2 * kv) + (q + 2 * kv) * self.qkv_bias + q * h, h
        if kind == "-":
            return (3 if self.gated_mlp else 2) * h * self.ffn, h
        d, gn, nh = self.mamba_inner, self.groups * self.state, self.mamba_heads
        conv = (d + 2 * gn) * (self.conv_kernel + 1)  # weights and bias
        return h * (2 * d + 2 * gn + nh) + conv + 3 * nh + d + d * h, h

    def activation_bytes(self, kind: str, tokens: int, tp: int, sp: bool) -> float:
        """Bytes one sub-layer keeps for its backward over ``tokens`` = s x b tokens (module docstring)."""
        h, kv, f = self.hidden, self.kv_heads * self.head_dim, self.ffn
        whole = 4 * h  # the norm's input and its output entering QKV / fc1 / in_proj, bf16
        if kind == "*":
            shard = 2 * h + 4 * kv + 2 * h  # Q, K and V, the attention output entering the projection
        elif kind == "-":
            shard = 6 * f if self.gated_mlp else 4 * f  # SwiGLU: gate, up, product; relu2: fc1 out, fc2 in
        else:  # in_proj output (z, x, B, C, dt), conv output, scan output, gated norm input, out_proj input
            d, gn = self.mamba_inner, self.groups * self.state
            shard = 2 * (2 * d + 2 * gn + self.mamba_heads) + 2 * (d + 2 * gn) + 6 * d
        return tokens * ((whole + shard) / tp if sp else whole + shard / tp)

    def vllm_bytes_per_sequence(self, tokens: int, tp: int) -> float:
        """KV cache (bf16) of the attention layers plus the fp32 Mamba state, one sequence, one GPU."""
        kv = 2 * self.kinds.count("*") * self.kv_heads * self.head_dim * 2 * tokens
        d, gn = self.mamba_inner, self.groups * self.state
        mamba = self.kinds.count("M") * (self.mamba_heads * self.mamba_head_dim * self.state * 4
                                         + (d + 2 * gn) * (self.conv_kernel - 1) * 2)
        return (kv + mamba) / tp


def check_layout(raw: dict, cfg: Config, train_gpus: int, gpus_per_node: int) -> list[str]:
    """Every divisibility the run needs, training and rollout side; raises ConfigError naming the
    first one broken. The model's rules are the provider's (``models.provider.layout_rules``)."""
    from igrpo_megatron.models.provider import check_divides, layout_rules
    from igrpo_megatron.weights.arch import arch_spec

    p, r = cfg.parallel, cfg.rollout
    hf_cfg = arch_spec(raw.get("model_type"), "model.hf_path").read_config(raw, "model.hf_path")
    rules = layout_rules(hf_cfg, p.tp, p.pp) + layout_rules(hf_cfg, r.tensor_parallel_size, 1,
                                                            "rollout.tensor_parallel_size")[:-1]
    rules += [("rollout.tensor_parallel_size", r.tensor_parallel_size, gpus_per_node, "GPUs of a rollout node"),
              ("parallel.tp x parallel.pp", p.tp * p.pp, train_gpus, "training GPUs (--train-gpus)")]
    checks = check_divides(rules)
    if p.sequence_parallel and p.tp == 1:
        raise ConfigError("parallel.sequence_parallel=true needs parallel.tp > 1")
    return checks


def _fmt(b: float) -> str:
    return f"{b / GIB:7.2f} GiB"


# The knobs that shrink each term, for a plan that does not fit.
_FIXES = {
    "parameters": "raise parallel.tp or parallel.pp",
    "gradients": "raise parallel.tp or parallel.pp",
    "optimizer states": "set parallel.use_distributed_optimizer=true or train on more GPUs (more data-parallel ranks)",
    "activations": "set model.recompute_activations=true, lower train.micro_batch_size, or set parallel.sequence_parallel=true",
    "logits": "lower train.micro_batch_size or raise parallel.tp",
    "reference model": "raise parallel.tp, or drop the KL term (loss.kl_beta=0)",
}


def plan(cfg: Config, raw: dict, source: str, *, gpu_memory_gib: float = 80.0, train_gpus: int = 8,
         gpus_per_node: int = 8) -> tuple[str, bool]:
    """The dry run's report and whether the training plan fits ``gpu_memory_gib``."""
    shape = Shape.from_hf(raw)
    checks = check_layout(raw, cfg, train_gpus, gpus_per_node)
    p, t, r, m = cfg.parallel, cfg.train, cfg.rollout, cfg.model
    tp, pp = p.tp, p.pp
    dp = train_gpus // (tp * pp)
    step = math.lcm(max(m.vocab_pad_multiple, 1), tp)
    vocab = -(-shape.vocab // step) * step

    # Parameters of the largest pipeline stage: blocks split evenly, embedding on the first stage,
    # output layer (unless tied) and final norm on the last.
    per_block = [shape.params(k) for k in shape.kinds]
    block_shard, block_whole = (sum(x[i] for x in per_block) for i in (0, 1))
    embed = vocab * shape.hidden
    head = 0 if shape.tied and pp == 1 else embed
    stage_shard = block_shard / pp + (embed + head if pp == 1 else max(embed, head))
    n_rank = stage_shard / tp + block_whole / pp + shape.hidden
    total = block_shard + block_whole + embed + (0 if shape.tied else embed) + shape.hidden

    w, g, o = _BYTES_PER_PARAM[m.dtype]
    terms = {"parameters": w * n_rank, "gradients": g * n_rank,
             "optimizer states": o * n_rank / (dp if p.use_distributed_optimizer else 1)}
    seq = r.max_prompt_tokens + r.max_tokens  # a row is padded to the longest prompt + response
    tokens = seq * t.micro_batch_size
    per_sublayer = [shape.activation_bytes(k, tokens, tp, p.sequence_parallel) for k in shape.kinds]
    width = len(shape.kinds) // shape.layers  # sub-layers per block: 2 for qwen2 / llama, 1 for Nemotron-H
    block = max(sum(per_sublayer[i:i + width]) for i in range(0, len(per_sublayer), width))
    # 1F1B: stage 1 holds pp micro-batches of L / pp blocks, i.e. L blocks' worth.
    full = sum(per_sublayer)
    kept_input = 2 * shape.hidden * tokens / (tp if p.sequence_parallel else 1)
    recomputed = shape.layers * kept_input + block  # every block's input, plus one block being recomputed
    terms["activations"] = recomputed if m.recompute_activations else full
    logit_bytes = 4 + 4 + 2 + (4 if cfg.loss.entropy_coef != 0 else 0)
    terms["logits"] = tokens * vocab / tp * logit_bytes
    if cfg.loss.kl_beta > 0:
        terms["reference model"] = 2 * n_rank
    terms["reserve (assumed)"] = RESERVE_GIB * GIB
    used = sum(terms.values())
    budget = gpu_memory_gib * GIB
    fits = used <= budget

    servers_per_node = gpus_per_node // r.tensor_parallel_size
    v_budget = r.gpu_memory_utilization * budget
    v_weights = 2 * total / r.tensor_parallel_size
    v_cache = v_budget - v_weights - VLLM_RESERVE_GIB * GIB
    per_seq = shape.vllm_bytes_per_sequence(r.max_model_len, r.tensor_parallel_size)
    fits_rollout = v_cache > per_seq
    group = max(cfg.igrpo.num_drafts, cfg.igrpo.num_refinements)
    sequences = t.prompts_per_step * cfg.igrpo.num_refinements

    lines = [
        f"model     {cfg.model.hf_path}: {shape.model_type}, {total / 1e9:.2f}B parameters, {shape.layers} layers, "
        f"hidden {shape.hidden}, heads {shape.heads} (kv {shape.kv_heads}), vocab {shape.vocab} (padded {vocab})",
        f"          config.json read from {source}",
        f"layout    training: {train_gpus} GPUs = TP {tp} x PP {pp} x DP {dp}"
        f"{', sequence parallel' if p.sequence_parallel else ''}; rollout: {servers_per_node} vLLM server(s) "
        f"per node of {gpus_per_node} GPUs, TP {r.tensor_parallel_size} each",
        *(f"          ok: {c}" for c in checks),
        f"batch     {t.prompts_per_step} prompts x {cfg.igrpo.num_drafts} drafts + {cfg.igrpo.num_refinements} "
        f"trained samples; {sequences} trained sequences per step, {sequences / dp:g} per DP rank, "
        f"{t.ppo_epochs * t.mini_batches} optimizer step(s) per step; micro-batch {t.micro_batch_size} x "
        f"{seq} tokens (max_prompt_tokens + max_tokens)",
        f"memory    per training GPU (largest pipeline stage: {n_rank / 1e9:.3f}B parameters), {m.dtype}, "
        f"{'distributed' if p.use_distributed_optimizer else 'replicated'} optimizer over DP {dp}:",
        *(f"          {name:<20}{_fmt(v)}" for name, v in terms.items()),
        f"          {'total':<20}{_fmt(used)}  of {gpu_memory_gib:g} GiB: {'fits' if fits else 'DOES NOT FIT'}",
        f"          activations {'without' if m.recompute_activations else 'with'} full recompute would be "
        f"{_fmt(full if m.recompute_activations else recomputed).strip()}",
        f"rollout   per vLLM GPU: {r.gpu_memory_utilization:g} x {gpu_memory_gib:g} GiB = {_fmt(v_budget).strip()}; "
        f"weights {_fmt(v_weights).strip()}, reserve {VLLM_RESERVE_GIB:g} GiB (assumed), KV cache "
        f"{_fmt(max(v_cache, 0)).strip()} = {max(v_cache, 0) / per_seq:.0f} sequences of {r.max_model_len} tokens "
        f"per server (a step asks for up to {t.prompts_per_step * group} at once, over all servers)"
        f"{'' if fits_rollout else ': DOES NOT FIT, raise rollout.tensor_parallel_size'}",
    ]
    if not fits:
        name = max((k for k in terms if k in _FIXES), key=terms.get)
        lines.append(f"over by {_fmt(used - budget).strip()}; the largest term is {name}: {_FIXES[name]}")
    return "\n".join(lines), fits and fits_rollout


def dry_run(cfg: Config, **kwargs) -> tuple[str, bool]:
    """:func:`plan` of ``cfg`` with the model's ``config.json`` found by :func:`find_hf_config`."""
    raw, source = find_hf_config(cfg.model.hf_path)
    return plan(cfg, raw, source, **kwargs)
