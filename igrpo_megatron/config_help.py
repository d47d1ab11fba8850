"""``igrpo-train --help-config [section]``: every config field with its type, default and help.

The help is the ``metadata["help"]`` that :func:`igrpo_megatron.config.opt` puts on each field, so
the text a user reads is the one next to the field in config.py.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Optional

import yaml

from igrpo_megatron.config import Config, ConfigError

SECTIONS: dict[str, type] = typing.get_type_hints(Config)  # name -> section dataclass, in file order


def type_name(tp: Any) -> str:
    """``Optional[Literal["a", "b"]]`` -> ``a|b|null``: the values a user may write."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return "|".join("null" if a is type(None) else type_name(a) for a in args)
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin is list:
        return f"list[{type_name(args[0])}]"
    return tp.__name__


def _yaml(value: Any) -> str:
    """``value`` as it would be written in a config file (null, true, [a, b], '')."""
    return yaml.safe_dump([value], default_flow_style=True, width=10_000).strip()[1:-1]


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def format_help(section: Optional[str] = None) -> str:
    """The help of one section (all of them when ``section`` is None) as printable text."""
    if section is not None and section not in SECTIONS:
        raise ConfigError(f"--help-config: unknown section {section!r}; sections: {' '.join(SECTIONS)}")
    lines = []
    for name, cls in SECTIONS.items():
        if section not in (None, name):
            continue
        lines.append(f"{name}: {cls.__doc__.strip().splitlines()[0].replace('``', '')}")
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            lines.append(f"  {name}.{f.name}: {type_name(hints[f.name])} = {_yaml(_default(f))}")
            lines.append(f"      {f.metadata.get('help', '')}")
        lines.append("")
    return "\n".join(lines)
