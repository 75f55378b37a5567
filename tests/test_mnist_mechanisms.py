"""The MNIST mechanisms' options: mask activation and starting coverage, the texture shift."""
from __future__ import annotations

import pytest
import torch

from mechanisms.mnist.generators import MaskGenerator, TextureGenerator, random_cyclic_shift
from scmgen.plugins import NodeInfo

INPUTS = {"noise": NodeInfo("u", "noise", dim=8), "label": NodeInfo("y", "label", classes=4)}


def test_initial_coverage_sets_the_starting_mask_mean() -> None:
    torch.manual_seed(0)
    mask = MaskGenerator(INPUTS, width=8, init_size=4, out_size=16, activation="sigmoid", initial_coverage=0.2)
    m = mask.eval()(torch.randn(64, 8), torch.randint(4, (64,)))
    assert m.shape == (64, 1, 16, 16) and abs(m.mean().item() - 0.2) < 0.08
    with pytest.raises(ValueError, match="initial_coverage needs activation: sigmoid"):
        MaskGenerator(INPUTS, activation="clamp", initial_coverage=0.2)


def test_texture_shift_only_in_training_and_is_a_roll() -> None:
    texture = TextureGenerator(INPUTS, width=8, init_size=4, out_size=16)
    noise, label = torch.randn(3, 8), torch.tensor([0, 1, 2])
    texture.eval()
    assert torch.equal(texture(noise, label), texture(noise, label))
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float).view(2, 3, 4, 4)
    shifted = random_cyclic_shift(x)
    for i in range(2):  # each image is one of the 16 cyclic rolls of itself
        assert any(torch.equal(shifted[i], torch.roll(x[i], (dy, dx), (1, 2))) for dy in range(4) for dx in range(4))
