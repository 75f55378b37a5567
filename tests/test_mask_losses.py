"""The mask priors, binary entropy and coverage interval, on masks whose values are known by
construction."""
from __future__ import annotations

import pytest
import torch

from mechanisms.losses import BinaryMask, MaskInterval
from scmgen.plugins import NodeInfo

INPUTS = {"mask": NodeInfo("mask", "mechanism")}


def _stroke() -> torch.Tensor:
    """A solid 4-pixel-wide bar on a 16x16 mask."""
    m = torch.full((1, 1, 16, 16), 1e-4)
    m[..., 6:10] = 0.9999
    return m


def test_binary_entropy_is_one_bit_at_one_half_and_near_zero_at_the_clamps() -> None:
    loss = BinaryMask(INPUTS)
    assert loss(torch.full((1, 1, 4, 4), 0.5)).item() == pytest.approx(1.0)
    assert loss(_stroke()).item() < 2e-3


def test_interval_is_zero_inside_and_the_distance_outside() -> None:
    loss = MaskInterval(INPUTS, low=0.1, high=0.5)
    assert loss(_stroke()).item() == 0.0  # mean 0.25
    assert loss(torch.full((1, 1, 4, 4), 0.9)).item() == pytest.approx(0.4)
    assert loss(torch.full((1, 1, 4, 4), 0.0)).item() == pytest.approx(0.1)
    with pytest.raises(ValueError, match="0 <= low < high <= 1"):
        MaskInterval(INPUTS, low=0.6, high=0.5)
