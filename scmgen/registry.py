"""Plugins by name: mechanisms, critics, losses and data sets.

Built-ins and third-party packages register the same way, through entry-point groups
(`scmgen.mechanisms`, `scmgen.critics`, `scmgen.losses`, `scmgen.datasets`). Graph files can
only name plugins found here, so a YAML file can never import or run code of its own choosing.
Code that builds graphs in Python may add plugins with `register`.
"""
from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, Callable

KINDS = ("mechanisms", "critics", "losses", "datasets")
SINGULAR = {"mechanisms": "mechanism", "critics": "critic", "losses": "loss", "datasets": "dataset"}

_local: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
_loaded: dict[str, dict[str, Any]] = {}


class UnknownPlugin(KeyError):
    def __init__(self, kind: str, name: str, available: list[str]) -> None:
        self.kind, self.name, self.available = kind, name, available
        super().__init__(f"unknown {SINGULAR[kind]} plugin '{name}', available: {', '.join(available) or 'none'}")

    def __str__(self) -> str:
        return self.args[0]

    def __reduce__(self) -> tuple[type, tuple[str, str, list[str]]]:
        return type(self), (self.kind, self.name, self.available)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"plugin kind must be one of {KINDS}, got {kind!r}")


def register(kind: str, name: str, obj: Any | None = None) -> Callable[[Any], Any] | Any:
    """Register `obj` under `name`; usable as a decorator: `@register("mechanisms", "my.shape")`."""
    _check_kind(kind)

    def add(target: Any) -> Any:
        _local[kind][name] = target
        return target

    return add(obj) if obj is not None else add


def names(kind: str) -> list[str]:
    _check_kind(kind)
    eps = {ep.name for ep in entry_points(group=f"scmgen.{kind}")}
    return sorted(eps | set(_local[kind]))


def get(kind: str, name: str) -> Any:
    """The plugin class or function; loads its entry point on first use."""
    _check_kind(kind)
    if name in _local[kind]:
        return _local[kind][name]
    cache = _loaded.setdefault(kind, {})
    if name not in cache:
        matches = [ep for ep in entry_points(group=f"scmgen.{kind}") if ep.name == name]
        if not matches:
            raise UnknownPlugin(kind, name, names(kind))
        cache[name] = matches[0].load()
    return cache[name]
