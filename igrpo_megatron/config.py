"""One typed config tree for a run, loaded from YAML with ``key.sub=value`` overrides.

Every field is validated up front (:func:`validate`): a bad run should fail in the first second
with a message that names the field and the fix, not after the vLLM server took a minute to start.
The tree is plain dataclasses so that every module takes exactly the section it needs; each
section checks its own fields (``validate()``), and :func:`validate` adds the checks that span
sections. Every field carries a one-line help (:func:`opt`), printed by ``igrpo-train
--help-config [section]`` (config_help.py).
"""
from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import yaml

from igrpo_megatron.errors import UserError


class ConfigError(UserError, ValueError):
    """A user-facing configuration error; the message names the field and the fix."""

    label = "config error"


def opt(default: Any, help: str) -> Any:
    """A field with its default and its one-line help: what it means, its unit, the paper's value.

    A list default is copied per instance (dataclasses forbid a shared mutable default).
    """
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def looks_local(path: Optional[str]) -> bool:
    """A path that cannot be a hub name ("org/name"): absolute, ~ or ./-relative, or deeper than org/name."""
    return bool(path) and (path.startswith(("/", "~", ".")) or path.count("/") > 1)


class Section:
    """A config section; ``validate`` checks the fields it holds (cross-section checks: :func:`validate`)."""

    def validate(self) -> None:
        pass


@dataclass
class ModelConfig(Section):
    """The policy network. ``hf_path`` holds config.json and the tokenizer (hub name or local dir)."""

    hf_path: str = opt("", "HF model: hub name or local folder with config.json, weights and tokenizer")
    tokenizer_path: Optional[str] = opt(None, "tokenizer hub name or folder; null: model.hf_path")
    load_hf_weights: bool = opt(True, "load the HF weights; false: random init (tests, demo warm-up)")
    init_checkpoint: Optional[str] = opt(
        None, "Megatron dist checkpoint to start from, any layout (igrpo-convert from-hf); null: hf_path")
    dtype: Literal["fp32", "bf16", "fp16"] = opt("bf16", "parameter and compute dtype (paper: bf16)")
    fp8: Optional[Literal["e4m3", "hybrid"]] = opt(
        None, "FP8 format (needs Transformer Engine and dtype=bf16); null: no FP8")
    fp8_recipe: Literal["delayed", "tensorwise", "blockwise", "mxfp8"] = opt(
        "delayed", "Transformer Engine FP8 scaling recipe (only with fp8)")
    fp8_amax_history_len: int = opt(1024, "steps of amax history for delayed scaling (only with fp8)")
    fp8_amax_compute_algo: Literal["max", "most_recent"] = opt(
        "max", "how delayed scaling reduces the amax history (only with fp8)")
    recompute_activations: bool = opt(
        False, "full-layer activation recomputation (paper: gradient checkpointing on)")
    transformer_impl: Literal["auto", "transformer_engine", "local"] = opt(
        "auto", "layer implementation; auto: Transformer Engine when importable, else Megatron's local")
    # A fixed multiple keeps the padded size, hence checkpoint shapes, the same for every TP that
    # divides it.
    vocab_pad_multiple: int = opt(
        128, "embedding/output rows are padded to a multiple of this (and of parallel.tp), in rows")

    def validate(self) -> None:
        if self.fp8 is not None:
            _require(self.dtype == "bf16", "model.fp8 needs model.dtype=bf16 (FP8 keeps bf16 master compute)")
        for name in ("hf_path", "tokenizer_path"):
            path = getattr(self, name)
            _require(not looks_local(path) or os.path.exists(os.path.expanduser(path)),
                     f"model.{name}={path}: no such folder; give an existing local folder or a hub name (org/name)")


@dataclass
class ParallelConfig(Section):
    """Model parallel layout. Data parallel size is world_size / (tp * pp)."""

    tp: int = opt(1, "tensor-parallel size (ranks per layer); must divide the heads and key/value heads")
    pp: int = opt(1, "pipeline-parallel size (stages); must divide the layers")
    sequence_parallel: bool = opt(False, "Megatron sequence parallelism over the TP group (needs tp > 1)")
    use_distributed_optimizer: bool = opt(
        True, "shard optimizer state over data-parallel ranks (Megatron distributed optimizer)")

    def validate(self) -> None:
        _require(self.tp >= 1 and self.pp >= 1, "parallel.tp and parallel.pp must be >= 1")

    def check_world_size(self, world_size: int) -> None:
        """The launch must fill whole TP x PP groups (the rest is data parallel)."""
        n = self.tp * self.pp
        _require(world_size % n == 0,
                 f"world size {world_size} is not divisible by parallel.tp * parallel.pp = {n}; "
                 f"launch a multiple of {n} ranks or change parallel.tp / parallel.pp")


@dataclass
class OptimConfig(Section):
    """AdamW with cosine decay; paper: lr 1e-6, min lr 0.1 x lr, 10 % warm-up."""

    lr: float = opt(1e-6, "peak learning rate (paper: 1e-6)")
    min_lr_ratio: float = opt(0.1, "cosine decay floor as a fraction of lr (paper: 0.1)")
    warmup_ratio: float = opt(0.1, "linear warm-up as a fraction of all optimizer steps (paper: 0.1)")
    weight_decay: float = opt(0.0, "AdamW decoupled weight decay")
    adam_beta1: float = opt(0.9, "Adam first-moment decay")
    adam_beta2: float = opt(0.999, "Adam second-moment decay")
    adam_eps: float = opt(1e-8, "Adam denominator epsilon")
    clip_grad: float = opt(1.0, "global gradient-norm clip (L2); 0 turns clipping off")

    def validate(self) -> None:
        _require(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio must be in [0, 1]")
        _require(0 <= self.warmup_ratio < 1, "optim.warmup_ratio must be in [0, 1)")
        _require(self.lr > 0, "optim.lr must be > 0")


@dataclass
class LossConfig(Section):
    """Policy-gradient loss and advantage estimator (see igrpo_megatron/algorithms/)."""

    advantage: Literal["grpo", "drgrpo", "rloo"] = opt(
        "grpo", "advantage estimator over a group: grpo (r - mean) / std (paper), drgrpo r - mean, rloo")
    aggregation: Literal["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"] = opt(
        "seq_mean_token_mean",
        "token mean per sequence, then mean over sequences (paper); token_mean (DAPO); "
        "token sum / constant (Dr.GRPO)")
    ratio_level: Literal["token", "sequence"] = opt(
        "token", "importance ratio per token (paper) or per sequence, length-normalised (GSPO)")
    clip_low: float = opt(0.2, "ratio lower bound is 1 - clip_low (paper: not stated; 0.2 is usual)")
    clip_high: float = opt(0.2, "ratio upper bound is 1 + clip_high (DAPO clip-higher: e.g. 0.28)")
    dual_clip_c: Optional[float] = opt(
        None, "dual-clip: for A < 0 the token loss is capped at -A * c, e.g. 3.0; null: off")
    kl_beta: float = opt(0.0, "weight of the KL to the reference model (paper: 0 in main runs)")
    kl_estimator: Literal["k1", "k2", "k3"] = opt("k3", "per-token KL estimator (paper: k3)")
    entropy_coef: float = opt(0.0, "entropy bonus weight, per token in nats (paper: none, 0)")
    tis_cap: Optional[float] = opt(
        None, "truncated importance weight cap vs vLLM's rollout logprobs, e.g. 2.0; null: off")
    seq_sum_norm_constant: Optional[float] = opt(
        None, "Dr.GRPO divisor in tokens, needed by seq_mean_token_sum_norm (use rollout.max_tokens)")
    dynamic_sampling: bool = opt(
        False, "DAPO: drop groups whose rewards have zero variance and refill the batch with new prompts")
    dynamic_sampling_max_refills: int = opt(
        4, "DAPO: extra rollout rounds to reach train.prompts_per_step kept groups; then train on those (warned)")

    def validate(self) -> None:
        _require(0 <= self.clip_low < 1 and self.clip_high >= 0,
                 "loss.clip_low must be in [0, 1) (the ratio's lower bound is 1 - clip_low) and loss.clip_high >= 0")
        _require(self.dual_clip_c is None or self.dual_clip_c > 1, "loss.dual_clip_c must be > 1 (e.g. 3.0) or null")
        _require(self.tis_cap is None or self.tis_cap >= 1, "loss.tis_cap must be >= 1 or null")
        _require(self.kl_beta >= 0, "loss.kl_beta must be >= 0")
        _require(self.dynamic_sampling_max_refills >= 0, "loss.dynamic_sampling_max_refills must be >= 0")


@dataclass
class IGRPOConfig(Section):
    """The two-stage wrapper. ``num_drafts = 0`` is plain GRPO with ``num_refinements`` samples."""

    num_drafts: int = opt(4, "N: stage-1 drafts per prompt, the best one conditions stage 2 (paper: 4; 0: GRPO)")
    num_refinements: int = opt(4, "G: stage-2 completions per prompt, the group trained on (paper: 4)")
    group_budget: Optional[int] = opt(
        8, "GRPO's group size that N + G must equal (paper: 8); null: no budget matching")
    max_draft_tokens: Optional[int] = opt(
        None, "draft tokens kept in the refinement prompt; null: what rollout.max_prompt_tokens leaves")
    overlap_stages: bool = opt(True, "send a prompt's refinements as soon as its drafts are scored")
    draft_selection: Literal["best", "random", "worst_formatted"] = opt(
        "best", "the draft stage 2 refines: best reward (paper), random, or the worst with format reward 1")
    # Table 1's other baselines (rollout/methods.py; choices: README "Choices the paper leaves open").
    method: Literal["two_stage", "critique_grpo", "self_verification"] = opt(
        "two_stage", "how groups are sampled: two_stage (iGRPO; num_drafts=0: GRPO), critique_grpo, self_verification")
    critique_refinements: int = opt(
        1, "critique_grpo: k of the group's num_refinements samples are refinements given a critique (7 + 1)")
    critique_source: Literal["rule", "policy", "endpoint"] = opt(
        "rule", "critique_grpo: rule (c_GT: reward + gold answer), policy (self-critique), endpoint (igrpo.critic_url)")
    critic_url: Optional[str] = opt(
        None, "critique_source=endpoint: base URL of an OpenAI-compatible critic server, e.g. http://host:8000")
    critic_model: Optional[str] = opt(None, "critique_source=endpoint: the model name the critic server serves")
    critic_api_key_env: str = opt(
        "IGRPO_CRITIC_API_KEY", "critique_source=endpoint: the env var holding the critic's key (may be unset)")
    critique_gamma: float = opt(0.1, "critique_grpo: shaping pi / (pi + gamma) of refinement tokens (paper: 0.1)")
    verify_buffer_size: int = opt(5000, "self_verification: solutions kept at each refresh (paper: 5,000 Qwen)")
    verify_refresh_every: Optional[int] = opt(
        None, "self_verification: steps between buffer refreshes (paper: 60); null: a quarter of the run")
    verify_prompts_per_step: Optional[int] = opt(
        None, "self_verification: verification prompts added per step; null: 40 % of prompts_per_step")

    def validate(self) -> None:
        _require(self.num_drafts >= 0, "igrpo.num_drafts must be >= 0 (0 is plain GRPO)")
        _require(self.method == "two_stage" or self.num_drafts == 0,
                 f"igrpo.method={self.method} samples no drafts; set igrpo.num_drafts=0 and igrpo.num_refinements "
                 f"to the group size (8 at the paper's budget)")
        _require(self.method != "critique_grpo" or 1 <= self.critique_refinements <= self.num_refinements - 2,
                 f"igrpo.critique_refinements={self.critique_refinements} must be in [1, num_refinements - 2]: "
                 f"the rest of the group ({self.num_refinements}) are initial responses, at least 2 (paper: 7 + 1)")
        _require(self.critique_gamma > 0, "igrpo.critique_gamma must be > 0 (paper: 0.1)")
        _require(self.method != "critique_grpo" or self.critique_source != "endpoint"
                 or bool(self.critic_url and self.critic_model),
                 "igrpo.critique_source=endpoint needs igrpo.critic_url (base URL of an OpenAI-compatible server) "
                 "and igrpo.critic_model (the model name it serves)")
        _require(self.verify_buffer_size >= 1, "igrpo.verify_buffer_size must be >= 1")
        _require(self.verify_refresh_every is None or self.verify_refresh_every >= 1,
                 "igrpo.verify_refresh_every must be >= 1 or null (null: a quarter of the run)")
        _require(self.verify_prompts_per_step is None or self.verify_prompts_per_step >= 0,
                 "igrpo.verify_prompts_per_step must be >= 0 or null (null: 40 % of train.prompts_per_step)")
        _require(self.num_refinements >= 2,
                 "igrpo.num_refinements must be >= 2: group-relative advantages need a group")
        if self.group_budget is not None:
            n = self.num_drafts + self.num_refinements
            _require(n == self.group_budget,
                     f"igrpo.num_drafts + igrpo.num_refinements = {n} but igrpo.group_budget = {self.group_budget}; "
                     f"budget matching with GRPO needs N + G = budget (paper: 4 + 4 = 8). Change one of them, "
                     f"or set igrpo.group_budget=null to turn matching off")
        _require(self.max_draft_tokens is None or self.max_draft_tokens >= 1,
                 "igrpo.max_draft_tokens must be >= 1 or null (null: whatever the prompt budget leaves)")


# The reply the judge's prompt asks for (rewards/judge.py), a grade in [0, 1] with at most two
# decimals, which ``judge.parse_score`` reads; at most 8 tokens in a Llama/Qwen vocabulary.
JUDGE_GRADE_REGEX = r"SCORE: (0(\.[0-9]{1,2})?|1(\.00?)?)"


def _compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True


@dataclass
class RewardConfig(Section):
    """total = accuracy_weight * accuracy + format_weight * format (paper: 1.0 + 1.0)."""

    kind: Literal["math_verify", "judge"] = opt(
        "math_verify", "accuracy scorer: math_verify (paper's rule-based) or judge (an LLM grade in [0, 1])")
    accuracy_weight: float = opt(1.0, "weight of the accuracy reward (paper: 1.0)")
    format_weight: float = opt(1.0, "weight of the <think>/<answer> format reward (paper: 1.0)")
    num_workers: int = opt(0, "math-verify worker processes; 0: one per core")
    timeout_s: float = opt(5.0, "CPU seconds per item in its worker; a timeout scores 0 and is counted")
    # For work stuck in C code that the worker's own timer cannot interrupt.
    kill_after_s: Optional[float] = opt(
        None, "wall seconds per item before its worker is killed; null: max(3 * timeout_s, timeout_s + 10)")
    chunk_size: int = opt(16, "items sent to a worker at once (fewer when the queue is short)")
    # DeepSeek-R1 distills: the completion starts inside the monologue.
    think_prefilled: Union[bool, Literal["auto"]] = opt(
        "auto", "the generation prompt ends inside <think> (R1 distills); auto: read from the chat template")
    judge_url: Optional[str] = opt(None, "judge: base URL of an OpenAI-compatible server, e.g. http://host:8000")
    judge_model: Optional[str] = opt(None, "judge: the model name the judge server serves (required by kind=judge)")
    judge_api_key_env: str = opt("IGRPO_JUDGE_API_KEY", "judge: name of the env var holding the key (may be unset)")
    judge_max_tokens: int = opt(512, "judge: generated tokens per grade")
    judge_timeout_s: float = opt(120.0, "judge: seconds per request")
    judge_max_retries: int = opt(3, "judge: retries on connection errors, 429 and 5xx, with exponential backoff")
    judge_concurrency: int = opt(16, "judge: requests in flight at once")
    judge_fallback_score: float = opt(0.0, "judge: accuracy when the reply is unusable (counted)")
    judge_reply_prefix: str = opt(
        "", "judge: forced start of the reply (vLLM continue_final_message), e.g. SCORE: for a small judge")
    judge_reply_regex: str = opt(
        JUDGE_GRADE_REGEX, "judge: regex the reply must match (vLLM structured_outputs; default: the grade line); \"\": free")
    overlong_cache_tokens: Optional[int] = opt(
        None, "DAPO overlong punishment: the last L_cache tokens before the cap ramp down to -1 (DAPO: 4,096); null: off")
    overlong_max_tokens: Optional[int] = opt(
        None, "DAPO overlong punishment's cap L_max in generated tokens, -1 beyond it; null: rollout.max_tokens")

    def overlong_cap(self, max_tokens: int) -> int:
        """L_max of the overlong punishment: ``overlong_max_tokens``, else the generation budget."""
        return self.overlong_max_tokens if self.overlong_max_tokens is not None else max_tokens

    def validate(self) -> None:
        _require(self.overlong_cache_tokens is None or self.overlong_cache_tokens >= 1,
                 "reward.overlong_cache_tokens must be >= 1 or null (off)")
        _require(self.kind != "judge" or bool(self.judge_url),
                 "reward.kind=judge needs reward.judge_url (an OpenAI-compatible endpoint)")
        _require(self.kind != "judge" or bool(self.judge_model),
                 "reward.kind=judge needs reward.judge_model (the model name the judge server serves)")
        _require(_compiles(self.judge_reply_regex),
                 f"reward.judge_reply_regex={self.judge_reply_regex!r} is not a valid regex; fix it or set it to \"\"")


@dataclass
class DataConfig(Section):
    """Prompts and gold answers. ``source`` is a hub dataset name or a local jsonl/json/parquet file."""

    preset: Optional[Literal["math", "acereason", "synthetic"]] = opt(
        None, "dataset preset: math (paper: MATH train, 7,500), acereason (AceReason-Math), synthetic")
    source: Optional[str] = opt(None, "hub dataset name or local jsonl/json/parquet file; null: the preset's")
    split: str = opt("train", "hub dataset split (a local file is one split)")
    prompt_field: Optional[str] = opt(None, "column holding the question; null: the preset's (else problem)")
    answer_field: Optional[str] = opt(None, "column holding the gold answer; null: the preset's (else answer)")
    answer_from_boxed: Optional[bool] = opt(
        None, "the gold answer is the last \\boxed{} of the answer column (MATH); null: the preset's")
    skip_malformed: bool = opt(False, "skip and count malformed rows; false: error naming file, row, field")
    max_examples: Optional[int] = opt(None, "keep a seeded random sample of this many rows, file order kept; null: all")
    shuffle: bool = opt(True, "shuffle the prompt order every epoch")
    seed: int = opt(1234, "seed of the prompt order and of the synthetic task")
    synthetic_size: int = opt(2000, "synthetic: number of questions")
    synthetic_max_operand: int = opt(20, "synthetic: largest operand")
    synthetic_ops: str = opt("+-", "synthetic: operators drawn from, a subset of +-* (* is harder)")
    synthetic_num_operands: int = opt(2, "synthetic: operands per question (>= 2)")
    # Weak instruction models rarely follow the paper's <answer> format without a nudge.
    system_prompt: Optional[str] = opt(
        None, "stage-1 / GRPO system instruction; null: the paper's (folded into the user turn if no system role)")
    user_suffix: str = opt("", "appended to every question, e.g. ' Put the final answer in \\boxed{}.'")

    def validate(self) -> None:
        _require(self.max_examples is None or self.max_examples >= 1, "data.max_examples must be >= 1 or null (all rows)")


@dataclass
class RolloutConfig(Section):
    """vLLM OpenAI-compatible servers and sampling."""

    server_urls: list[str] = opt([], "running servers (igrpo-serve); empty: the trainer launches one")
    host: str = opt("127.0.0.1", "interface a launched server binds to")
    port: int = opt(8000, "port a launched server listens on")
    api_key: Optional[str] = opt(
        None, "the servers' key; null: $IGRPO_ROLLOUT_API_KEY, igrpo-serve's stored key, else a new one")
    served_model_name: str = opt("policy", "model name the server answers to")
    tensor_parallel_size: int = opt(1, "vLLM tensor-parallel size of a launched server (GPUs per server)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt("auto", "vLLM weight dtype; auto: the model's")
    max_model_len: int = opt(5120, "vLLM context length in tokens (>= max_prompt_tokens + max_tokens)")
    gpu_memory_utilization: float = opt(0.85, "fraction of GPU memory vLLM may take (GPU, no kv_cache_memory_bytes)")
    kv_cache_memory_bytes: Optional[int] = opt(
        None, "vLLM KV cache size in bytes; null: from gpu_memory_utilization (CPU: 1 GiB)")
    seed: int = opt(0, "vLLM sampling seed")
    enforce_eager: bool = opt(False, "no CUDA graphs in vLLM (always on for CPU)")
    extra_args: list[str] = opt([], "extra vLLM server arguments, appended verbatim")
    startup_timeout_s: float = opt(600.0, "seconds a launched server may take to become healthy")
    temperature: float = opt(0.7, "training sampling temperature, also applied to logprobs (paper: 0.7)")
    top_p: float = opt(1.0, "nucleus sampling threshold (paper: not stated)")
    max_tokens: int = opt(4096, "generated tokens per completion, drafts and refinements (paper: 4,096)")
    max_prompt_tokens: int = opt(1024, "prompt tokens, the refinement prompt with its draft included (paper: 1,024)")
    stop: list[str] = opt([], "stop strings for generation")
    concurrency: int = opt(64, "requests in flight over all servers")
    request_timeout_s: float = opt(1800.0, "seconds per generation request")
    max_retries: int = opt(5, "retries of a failed request, on the next server")
    refit_transport: Literal["disk", "http", "nccl"] = opt(
        "disk", "how weights reach the servers: disk (shared folder), http (small models), nccl (GPU)")
    refit_dir: Optional[str] = opt(None, "disk transport: a folder rank 0 and every server can read")
    refit_bucket_mb: int = opt(512, "refit bucket size in MiB (export, send and load overlap bucket by bucket)")
    # "wait": each sample has exactly one weight version; "abort": the client retries them on the
    # new weights; "keep": such samples span two versions and are labelled with the older one.
    refit_pause_mode: Literal["wait", "abort", "keep"] = opt(
        "wait", "in-flight requests at a refit: finish on old weights, abort (retried), keep on new weights")
    nccl_master_address: Optional[str] = opt(None, "nccl transport: this trainer node's address")
    nccl_master_port: int = opt(29650, "nccl transport: rendezvous port on the trainer node")
    stale_policy: Literal["refuse", "count"] = opt(
        "refuse", "a sample from older weights: refuse (error) or count it in the metrics")
    async_steps: int = opt(
        0, "0: on-policy (paper); 1: step k+1's rollout generates on the previous weights while step k trains")

    def validate(self) -> None:
        _require(self.async_steps in (0, 1),
                 f"rollout.async_steps={self.async_steps}: give 0 (on-policy) or 1 (one step off-policy)")
        _require(0 < self.temperature,
                 "rollout.temperature must be > 0 (training samples, it does not decode greedily)")
        _require(0 < self.top_p <= 1, "rollout.top_p must be in (0, 1]")
        _require(self.max_prompt_tokens + self.max_tokens <= self.max_model_len,
                 f"rollout.max_prompt_tokens ({self.max_prompt_tokens}) + rollout.max_tokens ({self.max_tokens}) "
                 f"exceeds rollout.max_model_len ({self.max_model_len}); raise max_model_len or lower the others")


@dataclass
class TrainConfig(Section):
    """The outer loop: batch sizes, schedule, logging and checkpoints."""

    output_dir: str = opt("runs/igrpo", "run folder: checkpoints, metrics.jsonl, tensorboard, server logs")
    seed: int = opt(1234, "seed of initialisation and dropout (per layout, as Megatron-LM seeds)")
    epochs: int = opt(1, "passes over the data when max_steps is null (paper: 1)")
    max_steps: Optional[int] = opt(None, "rollout steps to run; null: epochs x data size / prompts_per_step")
    prompts_per_step: int = opt(128, "prompts per rollout step (paper: 1,024 completions per step = 128 x 8)")
    micro_batch_size: int = opt(4, "sequences per forward/backward micro-batch")
    # Rows join a micro-batch longest first while rows x its longest row fit (a longer row runs
    # alone); micro_batch_size then only sets the multiple the DP shards are padded to.
    max_tokens_per_micro_batch: Optional[int] = opt(
        None, "token budget per micro-batch (rows x longest row), like verl's dynamic batch size; null: off")
    ppo_epochs: int = opt(1, "passes over each rollout batch")
    mini_batches: int = opt(1, "optimizer steps per rollout batch and PPO epoch")
    save_every: int = opt(50, "checkpoint every this many steps, and at the end; 0: never")
    keep_last: int = opt(3, "checkpoints kept (older ones are deleted)")
    resume: bool = opt(True, "continue from output_dir/checkpoints/latest if present")
    # e.g. after switching parallel.use_distributed_optimizer, whose state megatron-core cannot convert
    load_optimizer: bool = opt(
        True, "resume Adam's state; false: weights, schedule, RNG and data position only")
    tensorboard: bool = opt(True, "also write TensorBoard events to output_dir")
    samples_fraction: float = opt(1.0, "share of each step's prompts whose texts go to rollouts.jsonl (1.0: all)")
    samples_token_ids: bool = opt(False, "rollouts.jsonl also holds prompt and response token ids")

    def validate(self) -> None:
        _require(0 < self.prompts_per_step, "train.prompts_per_step must be > 0")
        _require(self.micro_batch_size >= 1, "train.micro_batch_size must be >= 1")
        _require(self.max_tokens_per_micro_batch is None or self.max_tokens_per_micro_batch >= 1,
                 "train.max_tokens_per_micro_batch must be >= 1 or null")
        _require(self.mini_batches >= 1 and self.ppo_epochs >= 1,
                 "train.mini_batches and train.ppo_epochs must be >= 1")
        _require(self.keep_last >= 1, "train.keep_last must be >= 1")
        _require(0 <= self.samples_fraction <= 1, "train.samples_fraction must be in [0, 1]")


# Seeds of consecutive problems lie this far apart (eval/runner.py): more samples than any k.
EVAL_SEED_STRIDE = 1 << 16


@dataclass
class EvalConfig(Section):
    """``igrpo-eval``: avg@k, maj@k, pass@k through vLLM servers (the paper's protocol by default).

    Each entry of ``benchmarks`` is a registry name (igrpo_megatron/eval/benchmarks.py) or
    ``name=path`` to read that benchmark from a local jsonl/json/parquet file instead of the hub.
    """

    benchmarks: list[str] = opt(
        ["aime24", "aime25", "math500", "amc23", "gsm8k", "minerva_math"],
        "benchmark names, or name=path for a local file (paper: these six; also gpqa_diamond, mmlu_pro)")
    data_dir: Optional[str] = opt(None, "folder of <name>.jsonl files that replaces the hub downloads")
    samples: Optional[int] = opt(None, "k of avg@k for every benchmark; null: the paper's (64 AIME, 8 the rest)")
    pass_k: Optional[list[int]] = opt(None, "unbiased pass@k values reported (each <= samples); null: 1, 2, 4, ... k")
    temperature: float = opt(0.6, "sampling temperature (paper: 0.6)")
    top_p: float = opt(0.95, "nucleus sampling threshold (paper: 0.95)")
    max_tokens: int = opt(65000, "generated tokens per sample, whatever training used (paper: 65,000)")
    max_model_len: Optional[int] = opt(
        None, "context of the servers igrpo-eval starts; null: longest prompt + max_tokens")
    samples_per_request: int = opt(4, "a problem's k samples go out as requests of at most this many")
    servers: int = opt(1, "vLLM servers igrpo-eval starts when rollout.server_urls is empty (GPUs split among them)")
    request_timeout_s: float = opt(7200.0, "one request's time limit; must cover a sample of max_tokens tokens")
    paper_row: Optional[str] = opt(
        None, "Table 1 row results.md compares with, e.g. DeepSeek-R1-Distill-Qwen-7B/iGRPO; null: by model name")
    system_prompt: Literal["training", "none"] = opt(
        "training",
        "training: the policy's training prompt (data.system_prompt, data.user_suffix); none: no system message")
    prompt_template: str = opt("{problem}", "the user message; {problem} is replaced, other braces kept")
    limit: Optional[int] = opt(None, "first n problems of each benchmark (smoke runs); null: all")
    seed: int = opt(0, f"sampling seed (sample j of problem i uses seed + i * {EVAL_SEED_STRIDE} + j)")
    output_dir: str = opt("runs/eval", "folder for the samples (resumable), results.json and results.md")

    def validate(self) -> None:
        from igrpo_megatron.eval.report import PAPER_ROWS

        _require(bool(self.benchmarks), "eval.benchmarks is empty; name at least one (e.g. [math500])")
        _require(self.samples is None or 1 <= self.samples <= EVAL_SEED_STRIDE,
                 f"eval.samples must be in [1, {EVAL_SEED_STRIDE}] or null (null: the paper's k per benchmark)")
        _require(self.samples is None or all(k <= self.samples for k in self.pass_k or ()),
                 f"eval.pass_k={self.pass_k} asks for k above eval.samples={self.samples}")
        _require(all(k >= 1 for k in self.pass_k or ()), "eval.pass_k values must be >= 1")
        _require(0 < self.top_p <= 1 and self.temperature >= 0,
                 "eval.top_p must be in (0, 1] and eval.temperature >= 0")
        _require("{problem}" in self.prompt_template, "eval.prompt_template must contain {problem}")
        _require(min(self.max_tokens, self.samples_per_request, self.servers) >= 1,
                 "eval.max_tokens, eval.samples_per_request and eval.servers must be >= 1")
        _require(self.paper_row is None or self.paper_row in PAPER_ROWS,
                 f"eval.paper_row={self.paper_row!r} is not a Table 1 row; one of: {', '.join(PAPER_ROWS)}")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    igrpo: IGRPOConfig = field(default_factory=IGRPOConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def sections(self) -> list[Section]:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]


# ----------------------------------------------------------------------------------- loading


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against annotation ``tp`` (str values from the command line are parsed)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("null", "none") and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{path}: {value!r} is not one of {list(args)}; set it to one of those")
    if origin is list:
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [value]
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, str):
            try:
                value = int(float(value)) if float(value).is_integer() else value
            except ValueError:
                pass
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    raise AssertionError(f"unsupported annotation {tp} at {path}")


def _build(cls: type, data: dict, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"unknown key {where}{unknown[0]}; valid keys under {path or 'the top level'}: "
            f"{', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        sub = f"{path}.{name}" if path else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, {} if value is None else value, sub)  # `loss:` alone is empty
        else:
            kwargs[name] = _coerce(value, tp, sub)
    return cls(**kwargs)


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {k} is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """``["a.b=1", "c=x"]`` -> nested dict; values are parsed as YAML scalars."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({e}); quote it") from None
        _set_path(tree, key.strip(), value)
    return tree


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None, *,
                training: bool = True) -> Config:
    """Load YAML (may be ``None``), apply overrides, build the typed tree and validate it.

    ``training=False`` (igrpo-serve, igrpo-eval) skips the checks only a training run needs.
    """
    data: dict = {}
    if path:
        if not os.path.exists(path):
            raise ConfigError(f"config file {path} does not exist")
        with open(path, encoding="utf-8") as f:
            try:
                data = yaml.safe_load(f) or {}
            except yaml.YAMLError as e:
                raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    data = _merge(data, parse_overrides(overrides or []))
    cfg = _build(Config, data, "")
    validate(cfg, training=training)
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# -------------------------------------------------------------------------------- validation


def validate(cfg: Config, world_size: Optional[int] = None, *, training: bool = True) -> None:
    """Every section's own checks, then those that span sections.

    ``world_size`` defaults to the launcher's (``WORLD_SIZE``, set by torchrun and the launch
    scripts) in a training run, so a layout that cannot fill the world fails here, before any
    process group exists. ``models.provider.check_layout`` checks the layout against the model's shape.
    """
    for section in cfg.sections():
        section.validate()
    loss, r = cfg.loss, cfg.rollout
    _require(loss.aggregation != "seq_mean_token_sum_norm" or (loss.seq_sum_norm_constant or 0) > 0,
             f"loss.aggregation=seq_mean_token_sum_norm (Dr.GRPO) needs loss.seq_sum_norm_constant > 0; "
             f"set it to the generation budget, rollout.max_tokens={r.max_tokens}")
    cache = cfg.reward.overlong_cache_tokens
    _require(cache is None or cache <= cfg.reward.overlong_cap(r.max_tokens),
             f"reward.overlong_cache_tokens={cache} exceeds the cap L_max={cfg.reward.overlong_cap(r.max_tokens)} "
             f"(reward.overlong_max_tokens, else rollout.max_tokens); lower it")
    # The refill rounds of a rollout generated ahead would draw prompts on rank 0 alone, past the
    # data position the next checkpoint saves; the two are not combined.
    _require(not (loss.dynamic_sampling and r.async_steps),
             "loss.dynamic_sampling=true (DAPO's refill) and rollout.async_steps=1 cannot be combined; "
             "set one of them off")
    _require(not training or cfg.data.preset is not None or cfg.data.source is not None,
             "data: set data.preset (math, acereason, synthetic) or data.source (hub name or local file)")
    if world_size is None and training and "WORLD_SIZE" in os.environ:
        world_size = int(os.environ["WORLD_SIZE"])
    if world_size is not None:
        cfg.parallel.check_world_size(world_size)
