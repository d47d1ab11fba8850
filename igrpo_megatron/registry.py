"""Name -> implementation tables for the config's choices (``loss.advantage``, ``reward.kind``, ...).

One style for all of them (as verl's ``register_adv_est`` / ``get_adv_estimator_fn``): an
implementation registers itself by decorator next to its definition, a second registration of a
name is an error (two modules fighting over a name would otherwise depend on import order), and
looking up an unknown name is a :class:`~igrpo_megatron.config.ConfigError` that lists the valid
ones. tests/test_registry.py ties each registry to the ``Literal`` of its config field.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from igrpo_megatron.config import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """The implementations of one config field, e.g. ``Registry("loss.advantage")``."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@ADVANTAGES.register("grpo")`` on a function or class (returned unchanged)."""
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.key}: {name!r} is registered twice "
                                 f"({self._items[name]!r} and {item!r})")
            self._items[name] = item
            return item

        return add

    def __getitem__(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(f"{self.key}={name!r} is unknown; valid: {sorted(self._items)}")
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(self._items.items())
