"""U^2-Net: the state dict matches the official checkpoints key for key, checkpoints load strictly
or fail with one clear error, and the mask mechanism and background loss are frozen yet pass
gradient to their image. Forward tests use U^2-NetP at small sizes to stay fast."""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mechanisms.imagenet.u2net import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VARIANTS,
    BackgroundSaliency,
    U2NetMask,
    U2NetP,
    load_u2net,
)
from scmgen import registry, weights
from scmgen.plugins import NodeInfo
from scmgen.weights import MissingWeights

REFERENCE = Path(os.environ.get("SCMGEN_REFERENCE", "/work/shared/reference"))
# sha256 of the "key:[shape]" lines of the official checkpoints (u2net*_keys.json) and their
# parameter counts, so the exactness check holds where the reference files are absent
OFFICIAL = {"u2net": ("e8e5599942d3c1badbe632873f07d5d0d52b966fd66ae9305d129c8f2e48b04f", 44_009_869),
            "u2netp": ("7847e480ee32d09a11cb4fce0a419569b44ff330cb5301c98f5a7414951588e5", 1_131_181)}
IMAGE = {"image": NodeInfo("shape", "mechanism")}
BACKGROUND = {"background": NodeInfo("bg", "mechanism")}
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(autouse=True)
def _one_thread():
    """Many small convolutions: with the 2 cores shared, two OpenMP threads wait on each other
    at every layer (measured 0.03 s -> 5 s per U^2-NetP forward), so these tests use one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty weights cache, so no real download in ~/.cache changes what a test sees."""
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "weights"))
    monkeypatch.setitem(weights._state, "used_random", set())
    return tmp_path / "weights"


@pytest.fixture
def random_init(cache: Path):
    weights.set_random_init(True)
    try:
        yield
    finally:
        weights.set_random_init(False)


def image(*shape: int) -> torch.Tensor:
    return torch.rand(*shape) * 2 - 1


def randomised(net: torch.nn.Module) -> torch.nn.Module:
    """Random batch-norm statistics and affines, so a load that skipped them would show."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2)
                m.weight.normal_(1, 0.1)
                m.bias.normal_(0, 0.1)
    return net.eval()


@pytest.mark.parametrize("variant", ["u2net", "u2netp"])
def test_state_dict_is_the_official_layout(variant: str) -> None:
    with torch.device("meta"):
        net = VARIANTS[variant]()
    ours = {k: list(v.shape) for k, v in net.state_dict().items()}
    reference = REFERENCE / f"{variant}_keys.json"
    if reference.exists():
        official = json.loads(reference.read_text())
        assert list(ours) == list(official)
        assert ours == official
        assert sum(math.prod(s) for k, s in official.items() if not k.endswith(BUFFERS)) == OFFICIAL[variant][1]
    listing = "\n".join(f"{k}:{s}" for k, s in ours.items())
    assert hashlib.sha256(listing.encode()).hexdigest() == OFFICIAL[variant][0]
    assert sum(p.numel() for p in net.parameters()) == OFFICIAL[variant][1]  # 44.0M / 1.13M


def test_official_layout_checkpoint_loads_strictly(cache: Path) -> None:
    torch.manual_seed(0)
    source = randomised(U2NetP())
    path = cache / "u2netp" / "u2netp.pth"
    path.parent.mkdir(parents=True)
    torch.save(OrderedDict(source.state_dict()), path)
    x = image(2, 3, 64, 64)
    with torch.no_grad():
        expected = source(x)
        assert all(torch.equal(a, b) for a, b in zip(load_u2net(path, "u2netp")(x), expected))
        mask = U2NetMask(IMAGE, variant="u2netp")(x)
    assert torch.equal(mask, expected[0].clamp(1e-4, 0.9999))
    assert weights.used_random_init() == []


@pytest.mark.parametrize("spoil, message", [
    (lambda s: s.update({"side1.weight": torch.zeros(1, 32, 3, 3)}),
     r"'side1\.weight' has shape \(1, 32, 3, 3\), expected \(1, 64, 3, 3\)"),
    (lambda s: s.pop("stage3.rebnconv2.bn_s1.running_var"), r"missing key 'stage3\.rebnconv2\.bn_s1\.running_var'"),
    (lambda s: s.update({"module.extra": torch.zeros(1)}), r"unexpected key 'module\.extra'"),
], ids=["wrong-shape", "missing-key", "unexpected-key"])
def test_mismatched_checkpoint_is_one_clear_error(tmp_path: Path, spoil, message: str) -> None:
    state = OrderedDict(U2NetP().state_dict())
    spoil(state)
    torch.save(state, tmp_path / "u2netp.pth")
    with pytest.raises(ValueError, match=f"does not fit u2netp: {message}"):
        load_u2net(tmp_path / "u2netp.pth", "u2netp")


@pytest.mark.parametrize("size", [64, 50])  # 50: ceil-mode pooling on odd sizes (25, 13, 7, 4, 2)
def test_forward_gives_seven_maps_at_input_size(size: int) -> None:
    net = U2NetP().eval()
    with torch.no_grad():
        maps = net(image(2, 3, size, size))
    assert len(maps) == 7
    for m in maps:
        assert m.shape == (2, 1, size, size)
        assert 0 <= m.min() and m.max() <= 1


def test_mask_is_frozen_but_passes_gradient(random_init: None) -> None:
    mech = U2NetMask(IMAGE, variant="u2netp")
    assert weights.used_random_init() == ["u2netp"]
    assert not any(p.requires_grad for p in mech.parameters())
    mech.train()
    assert not any(m.training for m in mech.saliency.modules())  # batch-norm statistics never move
    x = image(1, 3, 64, 64).requires_grad_()
    mask = mech(x)
    assert mask.shape == (1, 1, 64, 64)
    assert mask.min() >= 1e-4 and mask.max() <= 0.9999
    mask.mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_resize_and_normalize_follow_official_inference(random_init: None) -> None:
    mech = U2NetMask(IMAGE, variant="u2netp", input_size=32, normalize=True)
    x = image(1, 3, 48, 40)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        small = F.interpolate(((x + 1) / 2 - mean) / std, size=(32, 32), mode="bilinear", align_corners=False)
        expected = F.interpolate(mech.saliency.net(small)[0], size=(48, 40), mode="bilinear", align_corners=False)
        mask = mech(x)
    assert mask.shape == (1, 1, 48, 40)
    torch.testing.assert_close(mask, expected.clamp(1e-4, 0.9999))


def test_background_saliency_is_a_differentiable_mean(random_init: None) -> None:
    loss = BackgroundSaliency(BACKGROUND, variant="u2netp")
    assert not any(p.requires_grad for p in loss.parameters())
    x = image(2, 3, 32, 32).requires_grad_()
    value = loss(x)
    assert value.shape == () and 0 < value.item() < 1
    value.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_missing_weights_say_how_to_fetch(cache: Path) -> None:
    with pytest.raises(MissingWeights, match="scmgen weights fetch u2netp"):
        U2NetMask(IMAGE, variant="u2netp")


def test_bad_variant_is_rejected(random_init: None) -> None:
    with pytest.raises(ValueError, match=r"unknown U\^2-Net variant 'u2', expected one of u2net, u2netp"):
        U2NetMask(IMAGE, variant="u2")


def test_plugins_and_weights_entries_are_registered() -> None:
    assert registry.get("mechanisms", "imagenet.u2net_mask") is U2NetMask
    assert registry.get("losses", "imagenet.background_saliency") is BackgroundSaliency
    for name in ("u2net", "u2netp"):
        entry = weights.ENTRIES[name]
        assert entry.kind == "u2net" and list(entry.files) == [f"{name}.pth"]
