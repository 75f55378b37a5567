"""Base classes that plugins subclass: what a mechanism, a critic and a loss look like to the engine."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class NodeInfo:
    """What a plugin may know about a parent when it is built (sizes, not values)."""

    name: str
    kind: str  # "noise" | "label" | "mechanism" | "data"
    dim: int | None = None  # noise size
    classes: int | None = None  # label classes


class ShapeMismatch(ValueError):
    """A tensor reaching a plugin does not have the shape that plugin expects."""


def check_shape(role: str, tensor: torch.Tensor, expected: Sequence[int | None]) -> None:
    """Raise `ShapeMismatch` unless `tensor` matches `expected` (None = any size)."""
    shape = tuple(tensor.shape)
    ok = len(shape) == len(expected) and all(e is None or e == s for e, s in zip(expected, shape))
    if not ok:
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise ShapeMismatch(f"input '{role}' has shape {shape}, expected {want}")


class Mechanism(nn.Module):
    """A node's structural equation. Subclasses set `roles`, the input roles they need, and
    implement `forward(**inputs)` returning one tensor."""

    roles: ClassVar[tuple[str, ...]] = ()
    optional_roles: ClassVar[tuple[str, ...]] = ()

    def __init__(self, inputs: dict[str, NodeInfo]) -> None:
        super().__init__()
        self.input_info = inputs

    def bind(self, mechanisms: Mapping[str, "Mechanism"]) -> None:
        """Called once the graph's mechanisms are all built, with them by node name: for a
        mechanism whose meaning after training depends on another's state (the MNIST textures
        follow the mask's orientation). Raise ValueError for a bad reference. Nothing by default."""

    def after_training(self) -> None:
        """Called once when training ends, before the model is saved: the place to settle what the
        losses leave open (the MNIST mask orients itself here). Nothing by default."""

    def diagnostics(self) -> dict[str, float]:
        """Scalars that show how this mechanism is training, logged to TensorBoard at every
        checkpoint (the MNIST mask: coverage and variation per class, where a collapsing class
        shows first). Must not draw from the global RNG, or logging would change the run. None by default."""
        return {}


class Loss(nn.Module):
    """A differentiable objective over named inputs; the engine multiplies it by its weight."""

    roles: ClassVar[tuple[str, ...]] = ()
    optional_roles: ClassVar[tuple[str, ...]] = ()

    def __init__(self, inputs: dict[str, NodeInfo], **params: Any) -> None:
        super().__init__()
        if params:
            raise TypeError(f"unexpected parameter(s): {', '.join(sorted(params))}")
        self.input_info = inputs


class AdversarialLoss(Loss):
    """A loss with a critic. The trainer calls `generator_loss` in the generator step and
    `critic_loss` (on detached fakes and the real batch) in the critic step."""

    roles = ("fake",)
    optional_roles = ("label",)

    def forward(self, critic: nn.Module, fake: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        return self.generator_loss(critic, fake, label)

    def generator_loss(self, critic: nn.Module, fake: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def critic_loss(self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                    real_label: torch.Tensor | None, fake_label: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError
