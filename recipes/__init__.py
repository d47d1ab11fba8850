"""The paper's runs as configs: one module per model and dataset, each listing its recipes.

``build(name)`` gives the validated :class:`~igrpo_megatron.config.Config` of a run and
``python -m recipes`` writes it to ``configs/<name>.yaml`` (what ``igrpo-train --config`` and
``launch/*.sh`` read). Hub names in a recipe are defaults: a local folder or file works wherever
a hub name does (``model.hf_path=/models/DeepSeek-R1-Distill-Qwen-7B``, ``data.source=train.jsonl``).
"""
from __future__ import annotations

import json
from typing import Optional, Sequence

import yaml

from igrpo_megatron.config import Config, ConfigError, load_config
from recipes import (nemotron_h_8b_math, openmath_nemotron_7b_math, openmath_nemotron_14b_math,
                     openreasoning_nemotron_7b_acereason, r1_distill_qwen_7b_math, r1_distill_qwen_14b_math)
from recipes.paper import Recipe

_MODULES = (r1_distill_qwen_7b_math, r1_distill_qwen_14b_math, openmath_nemotron_7b_math,
            openmath_nemotron_14b_math, openreasoning_nemotron_7b_acereason, nemotron_h_8b_math)
RECIPES: dict[str, Recipe] = {r.name: r for m in _MODULES for r in m.RECIPES}
_MODULE_OF = {r.name: m.__name__ for m in _MODULES for r in m.RECIPES}


def check_model_supported(recipe: Recipe) -> None:
    """Raise ConfigError when the project cannot build the recipe's model yet."""
    from igrpo_megatron.weights.arch import registered_model_types

    if recipe.model.model_type not in registered_model_types():
        raise ConfigError(
            f"recipe {recipe.name}: {recipe.model.hf_path} has model_type {recipe.model.model_type!r}, "
            f"which this project cannot train ({recipe.model.note or 'no Megatron provider'}); "
            f"implemented model types: {', '.join(registered_model_types())}")


def _as_overrides(settings: dict) -> list[str]:
    # JSON values are valid YAML scalars/lists, which is how load_config parses an override.
    return [f"{section}.{key}={json.dumps(value)}" for section, values in settings.items()
            for key, value in values.items()]


def build(name: str, overrides: Optional[Sequence[str]] = None) -> Config:
    """The validated config of recipe ``name``, with ``section.key=value`` overrides on top."""
    if name not in RECIPES:
        raise ConfigError(f"no recipe {name!r}; known recipes: {', '.join(sorted(RECIPES))}")
    recipe = RECIPES[name]
    check_model_supported(recipe)
    return load_config(None, _as_overrides(recipe.settings()) + list(overrides or []))


def render_yaml(name: str) -> str:
    """``configs/<name>.yaml`` exactly as ``python -m recipes`` writes it."""
    recipe = RECIPES[name]
    module = _MODULE_OF[name]
    doc = (__import__(module, fromlist=["_"]).__doc__ or "").strip().splitlines()
    header = [f"# {name}: generated from {module.replace('.', '/')}.py by `python -m recipes`;",
              "# edit the recipe and regenerate rather than editing this file.",
              *(f"# {line}".rstrip() for line in doc if line.strip())]
    return "\n".join(header) + "\n" + yaml.safe_dump(recipe.settings(), sort_keys=False)


def runnable() -> list[str]:
    """Names of the recipes whose model the project can train (those get a configs/*.yaml)."""
    out = []
    for name, recipe in RECIPES.items():
        try:
            check_model_supported(recipe)
        except ConfigError:
            continue
        out.append(name)
    return out
