"""The mask priors, binary entropy, coverage interval and variation, on masks whose values are known by
construction."""
from __future__ import annotations

import pytest
import torch

from mechanisms.losses import BinaryMask, MaskInterval, MaskVariation
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


def test_variation_counts_the_outline_and_is_highest_for_speckle() -> None:
    loss = MaskVariation(INPUTS)
    assert loss(torch.full((1, 1, 8, 8), 0.7)).item() == 0.0
    # the bar changes value across two of the 15 column boundaries, in each of its 16 rows
    assert loss(_stroke()).item() == pytest.approx(0.9998 * 2 / 15, rel=1e-4)
    checkerboard = (torch.arange(16).view(-1, 1) + torch.arange(16)).remainder(2).float().view(1, 1, 16, 16)
    assert loss(checkerboard).item() == pytest.approx(2.0)  # every neighbour differs, both directions
