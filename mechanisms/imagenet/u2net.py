"""U^2-Net salient-object detection (Qin et al., 2020), written to load the official checkpoints
strictly, and the two CGN plugins built on it: the shape mask (U^2-Net on top of the shape
generator's image) and the background loss (the saliency left in the background image).

Module and attribute names (stage1..stage6, stage5d..stage1d, rebnconv*, conv_s1/bn_s1, side*,
outconv) follow the official code because they are the checkpoint's state-dict keys.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from scmgen import weights
from scmgen.plugins import Loss, Mechanism, NodeInfo, check_shape

# Official download locations (Google Drive files linked from github.com/xuebinqin/U-2-Net's
# README); no published sha256. Drive answers a large file (u2net.pth, ~168 MiB) with a
# confirmation page rather than the file, so a fetcher must follow it or the user downloads by hand.
_DRIVE = "https://drive.google.com/uc?export=download&id="
weights.add_entry(weights.WeightsEntry(
    "u2net", "U^2-Net salient-object detector (full, 44.0M parameters), official checkpoint",
    files={"u2net.pth": (_DRIVE + "1ao1ovG1Qtx4b7EoskHXmi2E9rp5CHLcZ", None)}, kind="u2net"))
weights.add_entry(weights.WeightsEntry(
    "u2netp", "U^2-NetP salient-object detector (small, 1.13M parameters), official checkpoint",
    files={"u2netp.pth": (_DRIVE + "1rbSTGKAE-MTxBYHd-51l2hMOQPT_7EPy", None)}, kind="u2net"))


def _pool(x: torch.Tensor) -> torch.Tensor:
    """Halve the size, rounding up, so odd sizes keep their last row and column."""
    return F.max_pool2d(x, 2, 2, ceil_mode=True)


def _upsample_like(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if x.shape[-2:] == like.shape[-2:]:
        return x
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class REBNCONV(nn.Module):
    """3x3 convolution (optionally dilated), batch norm, ReLU."""

    def __init__(self, cin: int, cout: int, dilation: int = 1) -> None:
        super().__init__()
        self.conv_s1 = nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation)
        self.bn_s1 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn_s1(self.conv_s1(x)))


class RSU(nn.Module):
    """Residual U-block of a given height: a small U-Net whose output is added to its input
    projection. `dilated` gives RSU-4F: dilations 1, 2, 4, 8 instead of pooling, for the stages
    whose maps are already too small to pool."""

    def __init__(self, height: int, cin: int, mid: int, cout: int, dilated: bool = False) -> None:
        super().__init__()
        self.height, self.dilated = height, dilated
        dilation = [2 ** i for i in range(height)] if dilated else [1] * (height - 1) + [2]
        self.rebnconvin = REBNCONV(cin, cout)
        for i in range(1, height + 1):
            self.add_module(f"rebnconv{i}", REBNCONV(cout if i == 1 else mid, mid, dilation[i - 1]))
        for i in range(height - 1, 0, -1):
            self.add_module(f"rebnconv{i}d", REBNCONV(2 * mid, cout if i == 1 else mid, dilation[i - 1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top = self.height
        hin = h = self.rebnconvin(x)
        skips = []
        for i in range(1, top + 1):
            if 1 < i < top and not self.dilated:
                h = _pool(h)
            h = getattr(self, f"rebnconv{i}")(h)
            skips.append(h)
        h = skips.pop()
        for i in range(top - 1, 0, -1):
            skip = skips.pop()
            h = getattr(self, f"rebnconv{i}d")(torch.cat([_upsample_like(h, skip), skip], 1))
        return h + hin


_STAGES = ["stage1", "stage2", "stage3", "stage4", "stage5", "stage6",
           "stage5d", "stage4d", "stage3d", "stage2d", "stage1d"]
_HEIGHTS = (7, 6, 5, 4, 4, 4, 4, 4, 5, 6, 7)
_DILATED = {"stage5", "stage6", "stage5d"}


class U2Net(nn.Module):
    """Full U^2-Net (3 -> 1 channels, 44.0M parameters): six encoder RSU stages, five decoder
    stages, a side saliency map per decoder level, fused by a 1x1 convolution.

    forward(x) returns 7 sigmoid maps, the fused one first, then side 1..6, each Bx1xHxW at the
    input size."""

    # (in, mid, out) channels per stage, in _STAGES order
    WIDTHS: tuple[tuple[int, int, int], ...] = (
        (3, 32, 64), (64, 32, 128), (128, 64, 256), (256, 128, 512), (512, 256, 512), (512, 256, 512),
        (1024, 256, 512), (1024, 128, 256), (512, 64, 128), (256, 32, 64), (128, 16, 64))

    def __init__(self) -> None:
        super().__init__()
        for name, height, (cin, mid, cout) in zip(_STAGES, _HEIGHTS, self.WIDTHS):
            self.add_module(name, RSU(height, cin, mid, cout, dilated=name in _DILATED))
        out = {name: cout for name, (_, _, cout) in zip(_STAGES, self.WIDTHS)}
        for k, name in enumerate(["stage1d", "stage2d", "stage3d", "stage4d", "stage5d", "stage6"], 1):
            self.add_module(f"side{k}", nn.Conv2d(out[name], 1, 3, padding=1))
        self.outconv = nn.Conv2d(6, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h, skips = x, []
        for k in range(1, 7):
            h = getattr(self, f"stage{k}")(h if k == 1 else _pool(h))
            skips.append(h)
        levels = [skips.pop()]  # hx6, then hx5d .. hx1d
        for k in range(5, 0, -1):
            skip = skips.pop()
            levels.append(getattr(self, f"stage{k}d")(torch.cat([_upsample_like(levels[-1], skip), skip], 1)))
        sides = [_upsample_like(getattr(self, f"side{k}")(f), x) for k, f in enumerate(reversed(levels), 1)]
        fused = self.outconv(torch.cat(sides, 1))
        return tuple(torch.sigmoid(d) for d in [fused, *sides])


class U2NetP(U2Net):
    """U^2-NetP: the same architecture with 16 middle and 64 output channels everywhere (1.13M
    parameters)."""

    WIDTHS = ((3, 16, 64),) + ((64, 16, 64),) * 5 + ((128, 16, 64),) * 5


VARIANTS: dict[str, type[U2Net]] = {"u2net": U2Net, "u2netp": U2NetP}


def _variant(variant: str) -> type[U2Net]:
    if variant not in VARIANTS:
        raise ValueError(f"unknown U^2-Net variant {variant!r}, expected one of {', '.join(VARIANTS)}")
    return VARIANTS[variant]


def _first_mismatch(own: Mapping[str, torch.Tensor], state: Mapping[str, object]) -> str | None:
    for key, value in own.items():
        if key not in state:
            return f"missing key '{key}'"
        got = state[key]
        if not isinstance(got, torch.Tensor) or got.shape != value.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            return f"'{key}' has shape {shape}, expected {tuple(value.shape)}"
    for key in state:
        if key not in own:
            return f"unexpected key '{key}'"
    return None


def load_u2net(path: str | Path, variant: str = "u2net") -> U2Net:
    """Build `variant` and load an official checkpoint (a plain state dict) strictly, in eval
    mode. Any mismatch is one ValueError naming the first bad key, so a wrong or truncated
    file never silently gives a half-random network."""
    net = _variant(variant)()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise ValueError(f"{path}: unreadable {variant} checkpoint ({e})") from None
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    problem = _first_mismatch(net.state_dict(), state)
    if problem:
        raise ValueError(f"{path} does not fit {variant}: {problem}")
    net.load_state_dict(state, strict=True)
    return net.eval()


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FrozenSaliency(nn.Module):
    """A pretrained U^2-Net that never trains (no trainable parameters, batch norm always in eval
    mode) yet stays differentiable in its input: CGN trains the shape generator through it.
    Maps a [-1, 1] image to the fused saliency map at the image's size."""

    def __init__(self, variant: str = "u2net", input_size: int | None = None, normalize: bool = False) -> None:
        super().__init__()
        cls = _variant(variant)
        if input_size is not None and input_size < 1:
            raise ValueError(f"input_size must be a positive size or None, got {input_size}")
        self.input_size, self.normalize = input_size, normalize
        folder = weights.require(variant)
        self.net = cls() if folder is None else load_u2net(folder / f"{variant}.pth", variant)
        self.net.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> "FrozenSaliency":
        return super().train(False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image
        if self.normalize:  # official inference: [0, 1] then ImageNet statistics
            x = ((x + 1) / 2 - self.mean) / self.std
        if self.input_size is not None:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return _upsample_like(self.net(x)[0], image)


class U2NetMask(Mechanism):
    """The ImageNet CGN's shape mask: U^2-Net's fused saliency of the shape generator's image,
    clamped to [1e-4, 0.9999] like the MNIST masks, so the mask losses' logarithms stay finite."""

    roles = ("image",)

    def __init__(self, inputs: dict[str, NodeInfo], variant: str = "u2net", input_size: int | None = None,
                 normalize: bool = False) -> None:
        super().__init__(inputs)
        self.saliency = FrozenSaliency(variant, input_size, normalize)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        check_shape("image", image, (None, 3, None, None))
        return self.saliency(image).float().clamp(1e-4, 0.9999)  # fp32: bf16 rounds 0.9999 to 1


class BackgroundSaliency(Loss):
    """CGN's background loss: the mean U^2-Net saliency of the background image. Minimising it
    makes the background generator inpaint the object away."""

    roles = ("background",)

    def __init__(self, inputs: dict[str, NodeInfo], variant: str = "u2net", input_size: int | None = None,
                 normalize: bool = False) -> None:
        super().__init__(inputs)
        self.saliency = FrozenSaliency(variant, input_size, normalize)

    def forward(self, background: torch.Tensor) -> torch.Tensor:
        check_shape("background", background, (None, 3, None, None))
        return self.saliency(background).float().mean()
