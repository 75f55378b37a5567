"""Turning what a user asks for (`shape=3`, `texture=zebra`, a tensor, a function) into node values."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Union

import torch

from scmgen import classnames
from scmgen.errors import UsageError
from scmgen.spec import GraphSpec, LabelNode

# An intervention: a class id or name, a tensor, or a function of the pre-intervention value
# (DoWhy GCM's convention, so soft interventions such as `lambda y: (y + 1) % 10` work).
DoValue = Union[int, str, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


@dataclass(frozen=True)
class Resolution:
    """What a class id or name given to label node `node` resolved to. `candidates` are the
    other classes the same word also names (empty unless it was ambiguous), so a caller can
    say which one it picked."""

    value: str
    index: int
    name: str
    candidates: tuple[tuple[int, str], ...] = ()

    def describe(self, limit: int = 5) -> str:
        """E.g. 'cat -> 281 tabby (also: 282 tiger cat, 283 Persian cat, ...)'."""
        text = f"{self.value} -> {self.index} {self.name}"
        if self.candidates:
            shown = ", ".join(f"{i} {n}" for i, n in self.candidates[:limit])
            text += f" (also: {shown}{', ...' if len(self.candidates) > limit else ''})"
        return text


def _listing(classes: list[tuple[int, str]], limit: int = 10) -> str:
    shown = ", ".join(f"{i} {n}" for i, n in classes[:limit])
    return shown + (f", ... ({len(classes)} in all)" if len(classes) > limit else "")


def resolve_class(spec: GraphSpec, node: str, value: int | str, strict: bool = False) -> Resolution:
    """A class id or name of label node `node`, checked against its range.

    Plain name lists match whole names case-insensitively. Built-in sets (`names: imagenet`) also
    take synonyms and words inside names (`scmgen.classnames`); a word naming several classes
    resolves to the canonical one and lists the others, or, with `strict`, is a UsageError
    listing them all."""
    label = spec.nodes[node]
    assert isinstance(label, LabelNode)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    names = label.names or [str(i) for i in range(label.classes)]
    if isinstance(value, int):
        if not 0 <= value < label.classes:
            raise UsageError(f"do {node}={value}: class id out of range, expected 0..{label.classes - 1}")
        return Resolution(str(value), value, names[value])
    set_name = classnames.set_name_of(label.names)
    if set_name is None:
        lowered = [n.lower() for n in names]
        if value.lower() in lowered:
            index = lowered.index(value.lower())
            return Resolution(value, index, names[index])
        close = difflib.get_close_matches(value.lower(), lowered, n=3)
        hint = f"did you mean: {', '.join(names[lowered.index(c)] for c in close)}" if close else \
            f"valid: {', '.join(names[:12])}{' ...' if len(names) > 12 else ''}"
        raise UsageError(f"do {node}={value}: unknown class name; {hint}")
    found = classnames.lookup(set_name, value)
    if not found:
        close = difflib.get_close_matches(classnames.normalise(value), classnames.vocabulary(set_name), n=5)
        hint = f"did you mean: {', '.join(close)}" if close else \
            f"give a class id 0..{label.classes - 1} or a class name"
        raise UsageError(f"do {node}={value}: unknown class name; {hint}")
    matches = [(i, names[i]) for i in found]
    if strict and len(matches) > 1:
        raise UsageError(f"do {node}={value}: ambiguous class name, it names {len(matches)} classes: "
                         f"{_listing(matches)}; give one of their ids or full names")
    return Resolution(value, matches[0][0], matches[0][1], tuple(matches[1:]))


def class_index(spec: GraphSpec, node: str, value: int | str) -> int:
    """The class id `value` stands for at label node `node` (ambiguous words: the canonical class)."""
    return resolve_class(spec, node, value).index


def parse_do(items: list[str]) -> dict[str, str]:
    """`['shape=3', 'texture=7']` -> {'shape': '3', 'texture': '7'}."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise UsageError(f"--do {item}: expected NODE=VALUE, e.g. --do shape=3")
        if key in out:
            raise UsageError(f"--do {key} given twice")
        out[key] = value
    return out


def check_intervenable(spec: GraphSpec, do: dict[str, Any]) -> None:
    for node in do:
        if node not in spec.intervenable:
            raise UsageError(f"do {node}: not an intervenable node of graph '{spec.name}', "
                             f"expected one of: {', '.join(spec.intervenable) or 'none'}")


def value_tensor(spec: GraphSpec, node: str, value: DoValue, pre: torch.Tensor | None, n: int,
                 device: torch.device) -> torch.Tensor:
    """The tensor that replaces node `node` for a batch of `n`."""
    if callable(value) and not isinstance(value, torch.Tensor):
        if pre is None:
            raise UsageError(f"do {node}: a function intervention needs the pre-intervention value")
        out = value(pre)
        if not isinstance(out, torch.Tensor):
            raise UsageError(f"do {node}: the intervention function returned {type(out).__name__}, expected a tensor")
        return out.to(device)
    if isinstance(spec.nodes[node], LabelNode):
        if isinstance(value, torch.Tensor):
            t = value.to(device=device, dtype=torch.long).reshape(-1)
            if t.numel() not in (1, n):
                raise UsageError(f"do {node}: got {t.numel()} labels for a batch of {n}")
            classes = spec.nodes[node].classes
            if t.numel() and (t.min() < 0 or t.max() >= classes):
                raise UsageError(f"do {node}: class id out of range, expected 0..{classes - 1}")
            return t.expand(n).clone()
        return torch.full((n,), class_index(spec, node, value), dtype=torch.long, device=device)
    if not isinstance(value, torch.Tensor):
        raise UsageError(f"do {node}: a mechanism node takes a tensor or a function, got {value!r}")
    t = value.to(device)
    return t.expand(n, *t.shape[1:]).clone() if t.shape[0] == 1 and n != 1 else t
