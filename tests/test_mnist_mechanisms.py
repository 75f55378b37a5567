"""The MNIST mechanisms' options: mask activation, starting coverage and orientation; the texture shift and swap."""
from __future__ import annotations

import functools

import pytest
import torch

from mechanisms.mnist.generators import MaskGenerator, TextureGenerator, noise_offsets, random_cyclic_shift
from scmgen.plugins import NodeInfo

INPUTS = {"noise": NodeInfo("u", "noise", dim=8), "label": NodeInfo("y", "label", classes=4)}


def test_initial_coverage_sets_the_starting_mask_mean() -> None:
    torch.manual_seed(0)
    mask = MaskGenerator(INPUTS, width=8, init_size=4, out_size=16, activation="sigmoid", initial_coverage=0.2)
    m = mask.eval()(torch.randn(64, 8), torch.randint(4, (64,)))
    assert m.shape == (64, 1, 16, 16) and abs(m.mean().item() - 0.2) < 0.08
    with pytest.raises(ValueError, match="initial_coverage needs activation: sigmoid"):
        MaskGenerator(INPUTS, activation="clamp", initial_coverage=0.2)


def test_after_training_flips_exactly_the_classes_whose_mask_covers_the_background(tmp_path) -> None:
    from scmgen.checkpoint import load_module, save_module

    torch.manual_seed(0)
    mask = MaskGenerator(INPUTS, width=8, init_size=4, out_size=16, activation="sigmoid", initial_coverage=0.8)
    with torch.no_grad():  # a constant mask: the head reads nothing but its bias
        mask.embed.weight.zero_()
        mask.fc.weight[:, 8:] = 0.0
        mask.head.bias.zero_()
        mask.head.weight.zero_()
    raw = mask.coverage()
    assert torch.allclose(raw, torch.full((4,), 0.5), atol=1e-3)  # all logits 0 so far
    with torch.no_grad():
        mask.head.bias.fill_(1.386)  # logit of 0.8
        mask.inverted[[0, 2]] = True  # pretend classes 0 and 2 were flipped before, 1 and 3 not
    before = mask.coverage()
    assert torch.allclose(before, torch.tensor([0.2, 0.8, 0.2, 0.8]), atol=1e-3)
    mask.train()
    mask.after_training()
    assert mask.inverted.tolist() == [True] * 4 and mask.training
    assert torch.allclose(mask.coverage(), torch.full((4,), 0.2), atol=1e-3)
    save_module(mask, tmp_path / "mask.safetensors")  # the orientation travels with the weights
    again = MaskGenerator(INPUTS, width=8, init_size=4, out_size=16, activation="sigmoid")
    load_module(again, tmp_path / "mask.safetensors", "test")
    assert again.inverted.tolist() == [True] * 4
    off = MaskGenerator(INPUTS, width=8, init_size=4, out_size=16, activation="sigmoid", initial_coverage=0.8,
                        orient=False)
    off.after_training()
    assert off.inverted.tolist() == [False] * 4


def test_texture_shift_only_in_training_and_is_a_roll() -> None:
    texture = TextureGenerator(INPUTS, width=8, init_size=4, out_size=16)
    noise, label = torch.randn(3, 8), torch.tensor([0, 1, 2])
    texture.eval()
    assert torch.equal(texture(noise, label), texture(noise, label))
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float).view(2, 3, 4, 4)
    shifted = random_cyclic_shift(x)
    for i in range(2):  # each image is one of the 16 cyclic rolls of itself
        assert any(torch.equal(shifted[i], torch.roll(x[i], (dy, dx), (1, 2))) for dy in range(4) for dx in range(4))


def test_shifted_samples_roll_by_the_noise_uniformly_and_repeat_for_the_same_noise() -> None:
    """shift_samples: an evaluation sample is the unshifted map rolled by an offset that the noise
    fixes (a counterfactual keeps its texture where the factual image had it), and over N(0, 1)
    noise every offset comes up about equally often, as training's random shift does."""
    torch.manual_seed(0)
    plain = TextureGenerator(INPUTS, width=8, init_size=4, out_size=16).eval()
    shifting = TextureGenerator(INPUTS, width=8, init_size=4, out_size=16, shift_samples=True).eval()
    shifting.load_state_dict(plain.state_dict())
    noise, label = torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    with torch.inference_mode():
        unshifted, shifted = plain(noise, label), shifting(noise, label)
        assert torch.equal(shifted, shifting(noise, label))
    dy, dx = noise_offsets(noise, (16, 16))
    for i in range(6):
        assert torch.equal(shifted[i], torch.roll(unshifted[i], (-int(dy[i]), -int(dx[i])), (1, 2)))
    rows, cols = noise_offsets(torch.randn(16000, 8), (16, 16))
    for offsets in (rows, cols):
        assert torch.bincount(offsets, minlength=16).float().div(1000).sub(1).abs().max() < 0.15
    with pytest.raises(ValueError, match="two noise coordinates"):
        TextureGenerator({**INPUTS, "noise": NodeInfo("u", "noise", dim=1)}, width=8, init_size=4, out_size=16,
                         shift_samples=True)


def test_orientation_swaps_the_textures_and_leaves_factual_images_as_they_were() -> None:
    """A flipped class draws its object with the background network and vice versa, so a factual
    image (all labels tied to y, as in training) is the same composite as before the flip, while
    do(texture=c) now puts the texture learned for class c's objects on the object."""
    from scmgen.model import SCM

    model = SCM.from_yaml("graphs/cgn_double_colored_mnist.yaml").eval()
    mask, fg, bg, composer = (model.mechanisms[k] for k in ("mask", "foreground", "backdrop", "image"))
    torch.manual_seed(0)
    y = torch.tensor([1, 3, 0, 2])
    u_shape, u = torch.randn(4, mask.noise_dim), torch.randn(4, fg.noise_dim)  # one draw for both textures

    def factual() -> torch.Tensor:
        return composer(mask=mask(u_shape, y), foreground=fg(u, y), background=bg(u, y))

    with torch.inference_mode():
        before, raw_fg, raw_bg = factual(), fg(u, y), bg(u, y)
        mask.inverted[[1, 3]] = True
        after, swapped_fg, swapped_bg = factual(), fg(u, y), bg(u, y)
    assert torch.allclose(before, after, atol=1e-5)
    same = functools.partial(torch.allclose, atol=1e-6)  # each network now draws its rows as a smaller batch
    assert same(swapped_fg[:2], raw_bg[:2]) and same(swapped_fg[2:], raw_fg[2:])
    assert same(swapped_bg[:2], raw_fg[:2]) and same(swapped_bg[2:], raw_bg[2:])
    # the other texture network is referenced, not owned: the saved state is what it was
    assert set(model.state_dict()) == set(SCM.from_yaml("graphs/cgn_double_colored_mnist.yaml").state_dict())


def test_a_bad_texture_swap_reference_names_the_field() -> None:
    from scmgen.errors import SpecError
    from scmgen.model import SCM

    with pytest.raises(SpecError, match=r"nodes\.foreground\.params.*swap_with.*'nope'"):
        SCM.from_yaml("graphs/cgn_double_colored_mnist.yaml", ["nodes.foreground.params.swap_with=nope"])
    with pytest.raises(SpecError, match="swap_with and oriented_by go together"):
        SCM.from_yaml("graphs/cgn_double_colored_mnist.yaml", ["nodes.foreground.params={swap_with: backdrop}"])


def test_class_statistics_of_a_constant_mask_and_the_global_rng_left_alone() -> None:
    mask = MaskGenerator(INPUTS, width=8, init_size=4, out_size=16, activation="sigmoid")
    with torch.no_grad():  # a constant mask per class: the head reads only its bias, the label shifts nothing
        mask.embed.weight.zero_()
        mask.fc.weight[:, 8:] = 0.0
        mask.head.weight.zero_()
        mask.head.bias.fill_(-1.386)  # logit of 0.2
        mask.inverted[1] = True
    state = torch.get_rng_state()
    stats = mask.class_statistics()
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.allclose(stats["coverage"], torch.tensor([0.2, 0.8, 0.2, 0.2]), atol=1e-3)
    assert torch.allclose(stats["variation"], torch.zeros(4), atol=1e-6)  # nothing changes between neighbours
    assert mask.diagnostics()["coverage/class_1"] == pytest.approx(0.8, abs=1e-3) and len(mask.diagnostics()) == 8


def test_group_spread_is_the_per_group_standard_deviation_averaged_over_channels() -> None:
    from mechanisms.mnist.critics import group_spread

    torch.manual_seed(0)
    h = torch.randn(6, 4, 2, 2)
    groups = torch.tensor([0, 0, 1, 1, 1, 2])
    spread = group_spread(h, groups, 3)
    assert spread.shape == (6, 1, 2, 2)
    for rows in ([0, 1], [2, 3, 4]):
        expected = h[rows].std(0, unbiased=False).mean(0, keepdim=True)
        for r in rows:
            assert torch.allclose(spread[r], expected, atol=1e-4)
    assert spread[5].abs().max() < 1e-3  # alone in its group


def test_class_minibatch_std_lets_a_critic_see_only_its_own_class_in_the_batch() -> None:
    from mechanisms.mnist.critics import ConvCritic

    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    images = torch.randn(6, 3, 16, 16)
    other = images.clone()
    other[4] += 1.0  # a class-1 image changes
    for mode, class_0_moves in (("class", False), ("batch", True), (None, False)):
        critic = ConvCritic(2, size=16, width=8, minibatch_std=mode).eval()
        before, after = critic(images, labels), critic(other, labels)
        assert torch.equal(before[:3], after[:3]) != class_0_moves, mode
        assert not torch.equal(before[4], after[4])
        if mode is not None:  # and the class's own images move together: the spread feeds the output
            assert not torch.equal(before[3], after[3])
    with pytest.raises(ValueError, match="minibatch_std must be 'batch', 'class' or null"):
        ConvCritic(2, minibatch_std="group")
    with pytest.raises(ValueError, match="needs a class-conditional critic"):
        ConvCritic(None, minibatch_std="class")
