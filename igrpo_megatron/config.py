"""One typed config tree for a run, loaded from YAML with ``key.sub=value`` overrides.

Every field is validated up front (:func:`validate`): a bad run should fail in the first second
with a message that names the field and the fix, not after the vLLM server took a minute to start.
The tree is plain dataclasses so that every module takes exactly the section it needs.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import yaml


class ConfigError(ValueError):
    """A user-facing configuration error; the message names the field and the fix."""


@dataclass
class ModelConfig:
    """The policy network. ``hf_path`` holds config.json and the tokenizer (hub name or local dir)."""

    hf_path: str = ""
    tokenizer_path: Optional[str] = None  # defaults to hf_path
    load_hf_weights: bool = True  # False: random init (tests, demo warm-up from scratch)
    init_checkpoint: Optional[str] = None  # a Megatron dist checkpoint to start from (igrpo-convert from-hf)
    dtype: Literal["fp32", "bf16", "fp16"] = "bf16"
    # FP8 needs Transformer Engine; None turns it off.
    fp8: Optional[Literal["e4m3", "hybrid"]] = None
    fp8_recipe: Literal["delayed", "tensorwise", "blockwise", "mxfp8"] = "delayed"
    fp8_amax_history_len: int = 1024
    fp8_amax_compute_algo: Literal["max", "most_recent"] = "max"
    recompute_activations: bool = False  # the paper trains with gradient checkpointing
    transformer_impl: Literal["auto", "transformer_engine", "local"] = "auto"
    # The embedding/output rows are padded to a multiple of this (and of parallel.tp). A fixed
    # multiple keeps the padded size, hence checkpoint shapes, the same for every TP that divides it.
    vocab_pad_multiple: int = 128


@dataclass
class ParallelConfig:
    """Model parallel layout. Data parallel size is world_size / (tp * pp)."""

    tp: int = 1
    pp: int = 1
    sequence_parallel: bool = False
    use_distributed_optimizer: bool = True


@dataclass
class OptimConfig:
    """AdamW with cosine decay; paper: lr 1e-6, min lr 0.1 x lr, 10 % warm-up."""

    lr: float = 1e-6
    min_lr_ratio: float = 0.1
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0


@dataclass
class LossConfig:
    """Policy-gradient loss and advantage estimator (see igrpo_megatron/algorithms/)."""

    advantage: Literal["grpo", "drgrpo", "rloo"] = "grpo"
    aggregation: Literal["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"] = (
        "seq_mean_token_mean"
    )
    ratio_level: Literal["token", "sequence"] = "token"  # "sequence" is GSPO
    clip_low: float = 0.2
    clip_high: float = 0.2  # DAPO clip-higher uses e.g. 0.28
    dual_clip_c: Optional[float] = None  # e.g. 3.0; None disables dual-clip
    kl_beta: float = 0.0  # the paper's main runs use 0
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    entropy_coef: float = 0.0
    tis_cap: Optional[float] = None  # truncated importance sampling vs rollout logprobs, e.g. 2.0
    # Dr.GRPO's token-sum divisor; required by aggregation=seq_mean_token_sum_norm (the paper of
    # Dr.GRPO uses the generation budget, i.e. rollout.max_tokens).
    seq_sum_norm_constant: Optional[float] = None
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards have zero variance


@dataclass
class IGRPOConfig:
    """The two-stage wrapper. ``num_drafts = 0`` is plain GRPO with ``num_refinements`` samples."""

    num_drafts: int = 4  # N
    num_refinements: int = 4  # G
    group_budget: Optional[int] = 8  # GRPO's group size; N + G must equal it when set
    max_draft_tokens: Optional[int] = None  # draft budget inside the refinement prompt; None: derived
    overlap_stages: bool = True  # send a prompt's refinements as soon as its drafts are scored


@dataclass
class RewardConfig:
    """total = accuracy_weight * accuracy + format_weight * format (paper: 1.0 + 1.0)."""

    kind: Literal["math_verify", "judge"] = "math_verify"
    accuracy_weight: float = 1.0
    format_weight: float = 1.0
    num_workers: int = 0  # 0: one per core
    timeout_s: float = 5.0  # CPU seconds per item in its worker; a timeout scores 0 and is counted
    # Wall-clock bound per item, enforced by killing the worker (for work stuck in C code that the
    # worker's own timer cannot interrupt). None: max(3 * timeout_s, timeout_s + 10).
    kill_after_s: Optional[float] = None
    chunk_size: int = 16  # items sent to a worker at once (fewer when the queue is short)
    # True for chat templates whose generation prompt already ends with "<think>" (DeepSeek-R1
    # distills): the completion then starts inside the monologue and the format check prepends it.
    think_prefilled: bool = False
    judge_url: Optional[str] = None  # base URL of an OpenAI-compatible server, e.g. http://host:8000
    judge_model: Optional[str] = None
    judge_api_key_env: str = "IGRPO_JUDGE_API_KEY"  # name of the env var holding the key (may be unset)
    judge_max_tokens: int = 512
    judge_timeout_s: float = 120.0  # per request
    judge_max_retries: int = 3  # on connection errors, 429 and 5xx, with exponential backoff
    judge_concurrency: int = 16
    judge_fallback_score: float = 0.0  # accuracy when the judge's reply is unusable (counted)


@dataclass
class DataConfig:
    """Prompts and gold answers. ``source`` is a hub dataset name or a local jsonl/json/parquet file."""

    preset: Optional[Literal["math", "acereason", "synthetic"]] = None
    source: Optional[str] = None  # None: the preset's hub dataset
    split: str = "train"  # hub datasets only; a local file is one split
    # None: the preset's value, else "problem" / "answer" / False (see data/loading.py PRESETS)
    prompt_field: Optional[str] = None
    answer_field: Optional[str] = None
    answer_from_boxed: Optional[bool] = None  # MATH: the gold answer is the last \\boxed{} of the solution
    skip_malformed: bool = False  # False: a malformed row is an error naming file, row and field
    max_examples: Optional[int] = None  # keep a random sample of this many rows (seeded by data.seed, file order kept); None: all
    shuffle: bool = True
    seed: int = 1234
    synthetic_size: int = 2000
    synthetic_max_operand: int = 20
    synthetic_ops: str = "+-"  # operators drawn from; "+-*" is harder
    synthetic_num_operands: int = 2


@dataclass
class RolloutConfig:
    """vLLM OpenAI-compatible servers and sampling."""

    server_urls: list[str] = field(default_factory=list)  # empty: igrpo-serve / the trainer launches one
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: Optional[str] = None  # None: a random key is generated per job
    served_model_name: str = "policy"
    tensor_parallel_size: int = 1
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int = 5120
    gpu_memory_utilization: float = 0.85
    kv_cache_memory_bytes: Optional[int] = None  # required on CPU
    seed: int = 0
    enforce_eager: bool = False
    extra_args: list[str] = field(default_factory=list)
    startup_timeout_s: float = 600.0
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 4096
    max_prompt_tokens: int = 1024
    stop: list[str] = field(default_factory=list)
    concurrency: int = 64
    request_timeout_s: float = 1800.0
    max_retries: int = 5
    refit_transport: Literal["disk", "http", "nccl"] = "disk"
    refit_dir: Optional[str] = None  # shared filesystem folder for the disk transport
    refit_bucket_mb: int = 512
    # How /pause treats in-flight requests during a refit: "wait" lets them finish on the old
    # weights (each sample then has exactly one weight version), "abort" cancels them (the client
    # retries them on the new weights), "keep" freezes them and continues on the new weights
    # (such samples span two versions and are labelled with the older one).
    refit_pause_mode: Literal["wait", "abort", "keep"] = "wait"
    nccl_master_address: Optional[str] = None  # nccl transport: this trainer node's address
    nccl_master_port: int = 29650
    stale_policy: Literal["refuse", "count"] = "refuse"


@dataclass
class TrainConfig:
    """The outer loop: batch sizes, schedule, logging and checkpoints."""

    output_dir: str = "runs/igrpo"
    seed: int = 1234
    epochs: int = 1
    max_steps: Optional[int] = None  # None: one pass over the data times ``epochs``
    prompts_per_step: int = 128
    micro_batch_size: int = 4  # sequences per forward/backward micro-batch
    ppo_epochs: int = 1
    mini_batches: int = 1  # optimizer steps per rollout batch (per PPO epoch)
    save_every: int = 50
    keep_last: int = 3
    resume: bool = True  # continue from output_dir/checkpoints/latest if present
    # False: resume weights, schedule, RNG and data position but start Adam afresh (e.g. after
    # switching parallel.use_distributed_optimizer, whose state megatron-core cannot convert)
    load_optimizer: bool = True
    log_every: int = 1
    tensorboard: bool = True


@dataclass
class EvalConfig:
    """``igrpo-eval``: avg@k on math benchmarks through a vLLM server (paper protocol by default).

    Each entry of ``benchmarks`` is a registry name (igrpo_megatron/eval/benchmarks.py) or
    ``name=path`` to read that benchmark from a local jsonl/json/parquet file instead of the hub.
    """

    benchmarks: list[str] = field(
        default_factory=lambda: ["aime24", "aime25", "math500", "amc23", "gsm8k", "minerva_math"])
    data_dir: Optional[str] = None  # a folder of <name>.jsonl files that replaces the hub downloads
    samples: Optional[int] = None  # k for every benchmark; None: the paper's (64 AIME, 8 otherwise)
    pass_k: list[int] = field(default_factory=lambda: [1])  # unbiased pass@k also reported (k <= samples)
    temperature: float = 0.6
    top_p: float = 0.95
    # Paper: up to 65,000 generated tokens; each request is capped at what the server's
    # max_model_len leaves after the prompt.
    max_tokens: int = 65000
    # "training": the system instruction the policy was trained with (algorithms/igrpo.py), so a
    # trained model is asked the way it learned; "none": no system message (e.g. a base model).
    system_prompt: Literal["training", "none"] = "training"
    prompt_template: str = "{problem}"  # the user message; {problem} is replaced, other braces kept
    limit: Optional[int] = None  # first n problems of each benchmark (smoke runs)
    seed: int = 0
    output_dir: str = "runs/eval"


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


# ----------------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


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


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate(cfg: Config, world_size: Optional[int] = None, *, training: bool = True) -> None:
    """Cross-field checks; ``models.provider.check_layout`` checks the layout against the model's shape."""
    p, ig, r, t, loss, o = cfg.parallel, cfg.igrpo, cfg.rollout, cfg.train, cfg.loss, cfg.optim
    _require(p.tp >= 1 and p.pp >= 1, "parallel.tp and parallel.pp must be >= 1")
    _require(ig.num_drafts >= 0, "igrpo.num_drafts must be >= 0 (0 is plain GRPO)")
    _require(ig.num_refinements >= 2,
             "igrpo.num_refinements must be >= 2: group-relative advantages need a group")
    if ig.group_budget is not None:
        _require(
            ig.num_drafts + ig.num_refinements == ig.group_budget,
            f"igrpo.num_drafts + igrpo.num_refinements = {ig.num_drafts + ig.num_refinements} but "
            f"igrpo.group_budget = {ig.group_budget}; budget matching with GRPO needs N + G = budget "
            f"(paper: 4 + 4 = 8). Change one of them, or set igrpo.group_budget=null to turn matching off",
        )
    _require(0 < t.prompts_per_step, "train.prompts_per_step must be > 0")
    _require(t.micro_batch_size >= 1, "train.micro_batch_size must be >= 1")
    _require(t.mini_batches >= 1 and t.ppo_epochs >= 1, "train.mini_batches and train.ppo_epochs must be >= 1")
    _require(t.keep_last >= 1, "train.keep_last must be >= 1")
    _require(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio must be in [0, 1]")
    _require(0 <= o.warmup_ratio < 1, "optim.warmup_ratio must be in [0, 1)")
    _require(o.lr > 0, "optim.lr must be > 0")
    _require(0 <= loss.clip_low < 1 and loss.clip_high >= 0,
             "loss.clip_low must be in [0, 1) (the ratio's lower bound is 1 - clip_low) and loss.clip_high >= 0")
    _require(loss.aggregation != "seq_mean_token_sum_norm" or (loss.seq_sum_norm_constant or 0) > 0,
             f"loss.aggregation=seq_mean_token_sum_norm (Dr.GRPO) needs loss.seq_sum_norm_constant > 0; "
             f"set it to the generation budget, rollout.max_tokens={r.max_tokens}")
    _require(ig.max_draft_tokens is None or ig.max_draft_tokens >= 1,
             "igrpo.max_draft_tokens must be >= 1 or null (null: whatever the prompt budget leaves)")
    _require(loss.dual_clip_c is None or loss.dual_clip_c > 1,
             "loss.dual_clip_c must be > 1 (e.g. 3.0) or null")
    _require(loss.tis_cap is None or loss.tis_cap >= 1, "loss.tis_cap must be >= 1 or null")
    _require(loss.kl_beta >= 0, "loss.kl_beta must be >= 0")
    _require(0 < r.temperature, "rollout.temperature must be > 0 (training samples, it does not decode greedily)")
    _require(0 < r.top_p <= 1, "rollout.top_p must be in (0, 1]")
    _require(r.max_prompt_tokens + r.max_tokens <= r.max_model_len,
             f"rollout.max_prompt_tokens ({r.max_prompt_tokens}) + rollout.max_tokens ({r.max_tokens}) "
             f"exceeds rollout.max_model_len ({r.max_model_len}); raise max_model_len or lower the others")
    if cfg.model.fp8 is not None:
        _require(cfg.model.dtype == "bf16", "model.fp8 needs model.dtype=bf16 (FP8 keeps bf16 master compute)")
    _require(cfg.reward.kind != "judge" or bool(cfg.reward.judge_url),
             "reward.kind=judge needs reward.judge_url (an OpenAI-compatible endpoint)")
    _require(cfg.data.max_examples is None or cfg.data.max_examples >= 1, "data.max_examples must be >= 1 or null (all rows)")
    _require(not training or cfg.data.preset is not None or cfg.data.source is not None,
             "data: set data.preset (math, acereason, synthetic) or data.source (hub name or local file)")
    if world_size is not None:
        _require(world_size % (p.tp * p.pp) == 0,
                 f"world size {world_size} is not divisible by parallel.tp * parallel.pp = {p.tp * p.pp}")
