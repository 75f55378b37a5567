"""The mask priors, binary entropy, coverage interval and variation, on masks whose values are known by
construction."""
from __future__ import annotations

import pytest
import torch

from mechanisms.losses import BinaryMask, MaskDiversity, MaskInterval, MaskVariation
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


def test_layer_colours_is_zero_on_the_real_colours_and_pulls_a_foreign_one_back() -> None:
    from mechanisms.losses import LayerColours

    inputs = {role: NodeInfo(role, "mechanism") for role in ("foreground", "background")}
    loss = LayerColours({**inputs, "real": NodeInfo("data.image", "data")}, pixels=64)
    green, lime, red = (torch.tensor(c).view(1, 3, 1, 1).expand(2, 3, 8, 8) for c in
                        ([-1.0, -0.2, -1.0], [-1.0, 1.0, -1.0], [1.0, -1.0, -1.0]))
    real = lime.clone()
    real[..., 2:4, 2:6] = green[..., 2:4, 2:6]  # a green stroke on lime, as double-colored class 6
    torch.manual_seed(0)
    assert loss(green, lime, real).item() < 1e-6  # the layers hold exactly the real colours
    # either layer may hold the object: the loss does not say which (the mask's orientation is free)
    assert loss(lime, green, real).item() < 1e-6
    drifted = red.clone().requires_grad_(True)  # a foreground nothing shows, drifted to red
    value = loss(drifted, lime, real)
    assert value.item() > 1.0
    value.backward()
    assert drifted.grad is not None and drifted.grad[:, 0].sum() > 0  # descent lowers the red channel
    with pytest.raises(ValueError, match="pixels must be positive"):
        LayerColours({**inputs, "real": NodeInfo("data.image", "data")}, pixels=0)


def test_layer_colours_has_the_value_and_gradient_of_the_full_chamfer_distance() -> None:
    """The loss finds nearest pixels without gradient and differentiates only those pairs: it must agree
    with the min over the whole distance tensor, differentiated by autograd."""
    from mechanisms.losses import LayerColours

    inputs = {role: NodeInfo(role, "mechanism") for role in ("foreground", "background")}
    loss = LayerColours({**inputs, "real": NodeInfo("data.image", "data")}, pixels=32)
    torch.manual_seed(1)
    foreground, background = (torch.randn(3, 3, 8, 8, requires_grad=True) for _ in range(2))
    real = torch.randn(3, 3, 8, 8)
    torch.manual_seed(2)
    value = loss(foreground, background, real)
    value.backward()
    torch.manual_seed(2)  # the same random pixels, picked as the loss picks them
    picked = [x.flatten(2)[:, :, torch.randint(64, (32,))].transpose(1, 2) for x in (foreground, background, real)]
    layers, target = torch.cat(picked[:2], 1), picked[2]
    distance = (layers[:, :, None] - target[:, None]).pow(2).sum(-1)
    full = distance.min(2).values.mean() + distance.min(1).values.mean()
    grads = torch.autograd.grad(full, (foreground, background))
    assert value.item() == pytest.approx(full.item(), rel=1e-6)
    for mine, reference in zip((foreground.grad, background.grad), grads):
        assert torch.allclose(mine, reference, atol=1e-7)
        assert reference.abs().sum() > 0


DIVERSITY = {"mask": NodeInfo("mask", "mechanism"), "noise": NodeInfo("u", "noise", dim=4),
             "label": NodeInfo("shape", "label", classes=3)}


def test_diversity_is_high_for_masks_that_ignore_the_noise_and_reaches_the_mask() -> None:
    loss = MaskDiversity(DIVERSITY)
    torch.manual_seed(0)
    noise, label = torch.randn(12, 4), torch.tensor([0, 1, 2] * 4)
    follows = torch.sigmoid(noise[:, :1, None, None] * torch.linspace(-1, 1, 8).view(1, 1, 1, 8)).expand(12, 1, 8, 8)
    ignores = torch.sigmoid(label.float().view(12, 1, 1, 1) * torch.ones(1, 1, 8, 8)) + 1e-3 * follows
    assert loss(ignores, noise, label).item() > 100 * loss(follows, noise, label).item()
    # by hand: class 0 holds samples 0, 3, 6, 9, paired as neighbours (0, 3), (3, 6), (6, 9)
    pairs = [(i, i + 3) for c in range(3) for i in range(c, 9, 3)]
    apart = [(follows[i] - follows[j]).abs().mean() / (noise[i] - noise[j]).abs().mean() for i, j in pairs]
    assert loss(follows, noise, label).item() == pytest.approx(torch.stack([1 / (a + 1e-5) for a in apart]).mean().item(),
                                                               rel=1e-5)
    mask = follows.clone().requires_grad_(True)
    loss(mask, noise, label).backward()
    assert mask.grad is not None and mask.grad.abs().sum() > 0


def test_diversity_without_pairs_is_zero_and_checks_its_inputs() -> None:
    loss = MaskDiversity(DIVERSITY)
    mask = torch.rand(3, 1, 4, 4, requires_grad=True)
    out = loss(mask, torch.randn(3, 4), torch.tensor([0, 1, 2]))
    assert out.item() == 0.0 and out.requires_grad
    with pytest.raises(ValueError, match="'noise' must be a noise node"):
        MaskDiversity({**DIVERSITY, "noise": NodeInfo("y", "label", classes=3)})
