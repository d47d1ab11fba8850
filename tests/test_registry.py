"""One registry style, and every ``Literal`` choice of the config tied to the registry implementing it."""
import dataclasses
import typing
from typing import Literal, Optional

import pytest

from igrpo_megatron.algorithms import ADVANTAGE_ESTIMATORS, AGGREGATIONS, KL_ESTIMATORS
from igrpo_megatron.algorithms.draft_selection import DRAFT_SELECTIONS
from igrpo_megatron.config import Config, ConfigError, EvalConfig
from igrpo_megatron.eval import BENCHMARKS
from igrpo_megatron.registry import Registry
from igrpo_megatron.rewards import REWARDS
from igrpo_megatron.rollout import METHODS
from igrpo_megatron.rollout.refit import TRANSPORTS

REGISTRIES = {
    "loss.advantage": ADVANTAGE_ESTIMATORS,
    "loss.aggregation": AGGREGATIONS,
    "loss.kl_estimator": KL_ESTIMATORS,
    "igrpo.draft_selection": DRAFT_SELECTIONS,
    "reward.kind": REWARDS,
    "rollout.refit_transport": TRANSPORTS,
    "igrpo.method": METHODS,
}
# Choices that are a switch inside one function or a value handed to Megatron / TE / vLLM as is:
# no implementations to register.
SWITCHES = {
    "model.dtype", "model.fp8", "model.fp8_recipe", "model.fp8_amax_compute_algo", "model.transformer_impl",
    "loss.ratio_level", "data.preset", "rollout.dtype", "rollout.refit_pause_mode", "rollout.stale_policy",
    "eval.system_prompt", "reward.think_prefilled", "igrpo.critique_source",
}


def literal_fields(cls: type, prefix: str = "") -> dict[str, set]:
    """Dotted name -> choices of every ``Literal`` (or ``Optional[Literal]``) field under ``cls``."""
    out = {}
    for name, tp in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(tp):
            out.update(literal_fields(tp, f"{prefix}{name}."))
            continue
        args = typing.get_args(tp) if typing.get_origin(tp) is typing.Union else (tp,)
        for arg in args:
            if typing.get_origin(arg) is Literal:
                out[prefix + name] = set(typing.get_args(arg))
    return out


def mismatches(cls: type, registries: dict, switches: set) -> list[str]:
    """Every way the Literals under ``cls`` and ``registries`` disagree, one line each."""
    found = []
    for key, choices in literal_fields(cls).items():
        if key in switches:
            continue
        if key not in registries:
            found.append(f"{key}: a Literal without a registry (add it to REGISTRIES or SWITCHES)")
            continue
        names = set(registries[key])
        found += [f"{key}: {c!r} has no implementation" for c in sorted(choices - names)]
        found += [f"{key}: {n!r} is registered but not a choice" for n in sorted(names - choices)]
    return found


def test_every_literal_choice_has_an_implementation_and_back():
    assert mismatches(Config, REGISTRIES, SWITCHES) == []
    assert set(REGISTRIES) | SWITCHES == set(literal_fields(Config))  # no stale entry in either table
    assert {key: reg.key for key, reg in REGISTRIES.items()} == {key: key for key in REGISTRIES}
    # eval.benchmarks is a list, not a Literal: its default is the paper's six (Table 1), all
    # registered; the registry adds Fig. 2's two multiple-choice benchmarks, opted into by name.
    assert EvalConfig().benchmarks == [n for n, b in BENCHMARKS.items() if not b.multiple_choice]


def test_the_check_catches_each_direction():
    @dataclasses.dataclass
    class Sec:
        kind: Literal["a", "b"] = "a"
        mode: Optional[Literal["x"]] = None
        flag: Literal["on", "off"] = "on"

    @dataclasses.dataclass
    class Tree:
        sec: Sec = dataclasses.field(default_factory=Sec)

    kinds, modes = Registry("sec.kind"), Registry("sec.mode")
    kinds.register("a")(len)
    kinds.register("c")(len)
    modes.register("x")(len)
    assert mismatches(Tree, {"sec.kind": kinds, "sec.mode": modes}, set()) == [
        "sec.kind: 'b' has no implementation",
        "sec.kind: 'c' is registered but not a choice",
        "sec.flag: a Literal without a registry (add it to REGISTRIES or SWITCHES)",
    ]
    assert mismatches(Tree, {"sec.kind": kinds, "sec.mode": modes}, {"sec.kind", "sec.flag"}) == []


def test_registry_rules():
    reg: Registry = Registry("loss.thing")

    @reg.register("one")
    def one():
        return 1

    assert one() == 1 and reg["one"] is one  # the decorator returns the function unchanged
    assert "one" in reg and "two" not in reg and list(reg) == ["one"] and dict(reg.items()) == {"one": one}
    with pytest.raises(ValueError, match="loss.thing: 'one' is registered twice"):
        reg.register("one")(print)
    assert reg["one"] is one  # the first registration stands
    with pytest.raises(ConfigError, match=r"^loss.thing='two' is unknown; valid: \['one'\]$"):
        reg["two"]


def test_lookups_through_the_real_registries_list_the_names():
    with pytest.raises(ConfigError, match=r"reward.kind='regex' is unknown; valid: \['judge', 'math_verify'\]"):
        REWARDS["regex"]
    with pytest.raises(ConfigError, match=r"rollout.refit_transport='ftp' is unknown; valid: \['disk', 'http', 'nccl'\]"):
        TRANSPORTS["ftp"]
    with pytest.raises(ConfigError, match=r"loss.aggregation='sum' is unknown; valid: \['seq_mean_token_mean', "):
        AGGREGATIONS["sum"]
