"""The fixed composer of CGN: alpha blending of a foreground onto a background by a mask."""
from __future__ import annotations

import torch

from scmgen.plugins import Mechanism, NodeInfo, check_shape


class AlphaComposer(Mechanism):
    """x = m * f + (1 - m) * b. It has no parameters: the analytic composer is what makes the
    mechanisms independent, since each of m, f and b can be replaced without retraining."""

    roles = ("mask", "foreground", "background")

    def __init__(self, inputs: dict[str, NodeInfo]) -> None:
        super().__init__(inputs)

    def forward(self, mask: torch.Tensor, foreground: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
        b, c, h, w = foreground.shape
        check_shape("background", background, (b, c, h, w))
        check_shape("mask", mask, (b, None, h, w))
        if mask.shape[1] not in (1, c):
            check_shape("mask", mask, (b, 1, h, w))
        return mask * foreground + (1 - mask) * background
