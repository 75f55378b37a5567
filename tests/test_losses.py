"""Perceptual (LPIPS), Gram style and CGN patch-texture losses: values, gradients, frozen
backbones, where their weights come from, and the texture patch grid."""
from __future__ import annotations

import logging
from pathlib import Path

import lpips
import pytest
import torch
import torchvision

from mechanisms.imagenet.texture import TexturePatches, patch_grid
from mechanisms.perceptual import LPIPS, GramStyle, gram_matrix, weights_file
from scmgen import registry, weights

TAPS = (3, 8, 15, 22, 29)  # relu1_2 .. relu5_3 in torchvision's vgg16.features


@pytest.fixture(autouse=True)
def _no_pretrained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty weights caches and a fresh random-init record, whatever this machine holds."""
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "scmgen-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setitem(weights._state, "used_random", set())


@pytest.fixture(scope="module")
def vgg() -> torch.nn.Sequential:
    """A random torchvision vgg16.features (built on the meta device, so the 100M-parameter
    classifier costs nothing, then given real random weights)."""
    torch.manual_seed(0)
    with torch.device("meta"):
        features = torchvision.models.vgg16().features
    features = features.to_empty(device="cpu")
    for m in features:
        if isinstance(m, torch.nn.Conv2d):
            m.reset_parameters()
    return features.eval().requires_grad_(False)


def _no_download(*args: object, **kwargs: object) -> None:
    raise AssertionError("tried to download")


@pytest.fixture(scope="module")
def random_lpips() -> LPIPS:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(weights.CACHE_ENV, "/nonexistent/scmgen-cache")
        mp.setenv("TORCH_HOME", "/nonexistent/torch-home")
        mp.setattr(torch.hub, "download_url_to_file", _no_download)
        return LPIPS({})


def _write_state_dict(features: torch.nn.Sequential, folder: Path) -> Path:
    """Save `features` as torchvision names them, plus a classifier tensor the losses must ignore."""
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.6.bias"] = torch.zeros(1000)
    folder.mkdir(parents=True)
    path = folder / weights_file("vgg16")
    torch.save(state, path)
    return path


def _images(n: int = 2, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1, torch.rand(n, 3, size, size, generator=g) * 2 - 1


def _check_loss(loss: torch.nn.Module, zero_atol: float = 0.0) -> None:
    x, y = _images()
    assert loss(x, x.clone()).abs().item() <= zero_atol
    x.requires_grad_(True)
    y.requires_grad_(True)
    value = loss(x, y)
    assert value.ndim == 0 and value.item() > 0
    value.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert y.grad is None  # the target is a reference
    assert not any(p.requires_grad for p in loss.parameters())


def test_losses_are_registered() -> None:
    assert registry.get("losses", "perceptual.lpips") is LPIPS
    assert registry.get("losses", "perceptual.gram") is GramStyle
    assert registry.get("losses", "imagenet.texture_patches") is TexturePatches


def test_gram_zero_on_identical_positive_otherwise_and_frozen() -> None:
    _check_loss(GramStyle({}, weights=[1, 1, 1, 1]))


def test_lpips_zero_on_identical_positive_otherwise_and_frozen(random_lpips: LPIPS) -> None:
    _check_loss(random_lpips, zero_atol=1e-6)


def test_lpips_keeps_its_calibration_and_stays_in_eval_mode(random_lpips: LPIPS) -> None:
    shipped = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth", map_location="cpu",
                         weights_only=True)
    mine = random_lpips.model.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in shipped.items())
    random_lpips.train()
    assert not any(m.training for m in random_lpips.modules())


def test_random_backbone_is_recorded_and_said_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mechanisms.perceptual"):
        GramStyle({})
    assert weights.used_random_init() == ["vgg16"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "perceptual.gram" in lines[0] and "RANDOM vgg16" in lines[0]


def _reference_style(features: torch.nn.Sequential, x: torch.Tensor, y: torch.Tensor,
                     layer_weights: list[float], scale: float) -> torch.Tensor:
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def grams(img: torch.Tensor) -> list[torch.Tensor]:
        h, out = ((img + 1) / 2 - mean) / std, []
        for i, layer in enumerate(features[:23]):
            h = layer(h)
            if i in TAPS:
                b, c, hh, ww = h.shape
                f = h.reshape(b, c, -1)
                out.append(f @ f.transpose(1, 2) / (c * hh * ww))
        return out

    return scale * sum(w * (a - b).abs().mean() for w, a, b in zip(layer_weights, grams(x), grams(y)))


def test_vgg16_from_the_scmgen_cache_is_used(vgg: torch.nn.Sequential, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    _write_state_dict(vgg, cache / "vgg16")
    monkeypatch.setenv(weights.CACHE_ENV, str(cache))
    assert weights.present("vgg16")
    x, y = _images()
    loss = GramStyle({}, weights=[1, 2, 3, 4], scale=10.0)
    assert torch.allclose(loss(x, y), _reference_style(vgg, x, y, [1, 2, 3, 4], 10.0), rtol=1e-4)
    lp = LPIPS({})
    with torch.no_grad():
        mine = lp.model.net(x)
        h, ref = x, []
        for i, layer in enumerate(vgg):
            h = layer(h)
            if i in TAPS:
                ref.append(h)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(mine, ref))
    assert weights.used_random_init() == []


def test_vgg16_from_the_torch_hub_cache_is_used(vgg: torch.nn.Sequential, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    _write_state_dict(vgg, tmp_path / "th" / "hub" / "checkpoints")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    x, y = _images(seed=1)
    loss = GramStyle({}, weights=[0, 1, 1, 0])
    assert torch.allclose(loss(x, y), _reference_style(vgg, x, y, [0, 1, 1, 0], 1.0), rtol=1e-4)
    assert weights.used_random_init() == []


def test_unreadable_weights_file_is_a_value_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cache" / "vgg16").mkdir(parents=True)
    (tmp_path / "cache" / "vgg16" / weights_file("vgg16")).write_bytes(b"not a state dict")
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="cannot read .*vgg16-397923af.pth as a state dict"):
        GramStyle({})


def test_gram_matrix_is_normalised_by_size() -> None:
    f = torch.ones(1, 2, 3, 4)
    assert torch.allclose(gram_matrix(f), torch.full((1, 2, 2), 12 / 24))


@pytest.mark.parametrize("params", [{"weights": [1, 1, 1]}, {"weights": [0, 0, 0, 0]}, {"weights": [1, -1, 0, 0]},
                                    {"scale": 0}])
def test_gram_rejects_bad_params(params: dict) -> None:
    with pytest.raises(ValueError, match="weights|scale"):
        GramStyle({}, **params)


def _half_image(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image +1 on the left half and -1 on the right; mask 1 on the left half only."""
    image = torch.full((2, 3, size, size), -1.0)
    image[..., : size // 2] = 1.0
    mask = torch.zeros(2, 1, size, size)
    mask[..., : size // 2] = 1.0
    return image, mask


@pytest.mark.parametrize("size, out_size", [(128, None), (256, 256)])
def test_patch_grid_takes_patches_from_the_masked_region(size: int, out_size: int | None) -> None:
    image, mask = _half_image(size)
    grid = patch_grid(image, mask, out_size=out_size)
    assert grid.shape == (2, 3, out_size or 90, out_size or 90)
    assert torch.allclose(grid, torch.ones_like(grid), atol=1e-5)


def test_patch_grid_shape_and_global_rng() -> None:
    image, mask = torch.rand(3, 3, 64, 64), torch.rand(3, 1, 64, 64)
    torch.manual_seed(7)
    a = patch_grid(image, mask, patch=5, top=10, grid=3, size=32)
    torch.manual_seed(7)
    b = patch_grid(image, mask, patch=5, top=10, grid=3, size=32)
    assert a.shape == (3, 3, 15, 15) and torch.equal(a, b)
    with pytest.raises(ValueError, match="exceeds"):
        patch_grid(image, mask, patch=30, top=10, size=32)


def test_patch_grid_tiles_the_chosen_patches() -> None:
    """With one admissible window (top=1) every tile is that window of the image."""
    image = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    mask = torch.zeros(2, 1, 16, 16)
    mask[0, :, 2:6, 9:13] = 1  # the best 4x4 window of image 0 starts at row 2, column 9
    mask[1, :, 10:14, 0:4] = 1
    grid = patch_grid(image, mask, patch=4, top=1, grid=2, size=16)
    for b, (r, c) in enumerate([(2, 9), (10, 0)]):
        tile = image[b, :, r:r + 4, c:c + 4]
        assert torch.equal(grid[b], tile.repeat(1, 2, 2))


def test_texture_loss_gradients_and_zero_on_uniform_texture() -> None:
    loss = TexturePatches({}, patch=5, top=20, grid=3, size=32)
    texture, target = _images(size=32)
    mask = torch.rand(2, 1, 32, 32)
    texture.requires_grad_(True)
    target.requires_grad_(True)
    value = loss(texture, target, mask)
    assert value.ndim == 0 and value.item() > 0
    value.backward()
    assert texture.grad is not None and texture.grad.abs().sum() > 0 and target.grad is None
    assert not any(p.requires_grad for p in loss.parameters())
    # a uniform target gives a uniform grid: a texture of the same colour matches it exactly
    colour = torch.tensor([0.3, -0.2, 0.5]).view(1, 3, 1, 1).expand(2, 3, 32, 32)
    assert loss(colour.clone(), colour.clone(), mask).item() < 1e-6
    assert "vgg16" in weights.used_random_init()
    with pytest.raises(ValueError, match="exceeds"):
        TexturePatches({}, patch=15, top=200, size=20)


def test_r1_penalises_the_critics_gradient_on_real_images_only() -> None:
    from mechanisms.losses import LeastSquaresGAN
    from scmgen.plugins import NodeInfo

    inputs = {"fake": NodeInfo("image", "mechanism")}
    critic = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 1))
    real, fake = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    plain = LeastSquaresGAN(inputs)
    with_r1 = LeastSquaresGAN(inputs, r1=2.0)

    def wrapped(x: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
        return critic(x)

    base = plain.critic_loss(wrapped, real, fake, None, None)
    penalised = with_r1.critic_loss(wrapped, real, fake, None, None)
    # a linear critic's input gradient is its weight vector, the same for every image
    expected = 2.0 / 2 * critic[1].weight.pow(2).sum()
    assert torch.allclose(penalised - base, expected)
    penalised.backward()  # the penalty is differentiable in the critic's weights (create_graph)
    assert critic[1].weight.grad is not None and not real.requires_grad
    with pytest.raises(ValueError, match="r1"):
        LeastSquaresGAN(inputs, r1=-1.0)
