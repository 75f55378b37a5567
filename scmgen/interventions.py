"""Turning what a user asks for (`shape=3`, `texture=zebra`, a tensor, a function) into node values."""
from __future__ import annotations

import difflib
from typing import Any, Callable, Union

import torch

from scmgen.errors import UsageError
from scmgen.spec import GraphSpec, LabelNode

# An intervention: a class id or name, a tensor, or a function of the pre-intervention value
# (DoWhy GCM's convention, so soft interventions such as `lambda y: (y + 1) % 10` work).
DoValue = Union[int, str, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


def class_index(spec: GraphSpec, node: str, value: int | str) -> int:
    """A class id or (case-insensitive) class name of label node `node`, checked against its range."""
    label = spec.nodes[node]
    assert isinstance(label, LabelNode)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, int):
        if not 0 <= value < label.classes:
            raise UsageError(f"do {node}={value}: class id out of range, expected 0..{label.classes - 1}")
        return value
    names = label.names or [str(i) for i in range(label.classes)]
    lowered = [n.lower() for n in names]
    if value.lower() in lowered:
        return lowered.index(value.lower())
    close = difflib.get_close_matches(value.lower(), lowered, n=3)
    hint = f"did you mean: {', '.join(names[lowered.index(c)] for c in close)}" if close else \
        f"valid: {', '.join(names[:12])}{' ...' if len(names) > 12 else ''}"
    raise UsageError(f"do {node}={value}: unknown class name; {hint}")


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
