"""The tiny iGRPO run that the end-to-end tests train (trainer e2e, the sbatch script under Slurm).

TP=2 Megatron in fp32 on the tiny Qwen2, 2 drafts + 2 refinements per prompt, a short vLLM
server-side budget; each test overrides what it is about.
"""
from __future__ import annotations


def tiny_run_config(model_dir: str, output_dir: str, port: int, **sections: dict) -> dict:
    """The run's config as a dict; ``sections`` update the keys of each named section."""
    cfg = {
        "model": {"hf_path": model_dir, "dtype": "fp32"},
        "parallel": {"tp": 2, "use_distributed_optimizer": False},
        "optim": {"lr": 1e-3, "warmup_ratio": 0.0, "min_lr_ratio": 1.0},
        "igrpo": {"num_drafts": 2, "num_refinements": 2, "group_budget": 4},
        "reward": {"num_workers": 1},
        "data": {"preset": "synthetic"},
        "rollout": {"port": port, "dtype": "float32", "enforce_eager": True, "kv_cache_memory_bytes": 1 << 27,
                    "max_model_len": 1024, "max_prompt_tokens": 900, "temperature": 1.0},
        "train": {"output_dir": output_dir, "micro_batch_size": 4, "tensorboard": False},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return cfg


def hf_weight_norm(model_dir: str) -> float:
    """L2 norm of an HF folder's weights: ``Policy.weight_norm`` of a model loaded from it (the rows
    Megatron adds to pad the vocabulary are zeros)."""
    import glob
    import math
    import os

    from safetensors.torch import load_file

    tensors = [t for f in glob.glob(os.path.join(model_dir, "*.safetensors")) for t in load_file(f).values()]
    return math.sqrt(sum(float(t.double().square().sum()) for t in tensors))
