"""A procedural data set of coloured shapes on coloured backgrounds.

It needs no download and builds in milliseconds, so tests and examples can train real graphs
end to end; its factors (shape, object colour, background colour) mirror double-colored MNIST.
"""
from __future__ import annotations

import torch

from scmgen.data import ImageSet

SHAPES = ("square", "disk", "cross", "triangle")
COLOURS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.3, 0.9], [0.95, 0.85, 0.1]])
BACKGROUNDS = torch.tensor([[0.2, 0.2, 0.2], [0.6, 0.5, 0.4], [0.3, 0.6, 0.7], [0.9, 0.9, 0.9]])


def _masks(size: int) -> torch.Tensor:
    """One binary mask per shape class, (len(SHAPES), size, size)."""
    c = (size - 1) / 2
    y, x = torch.meshgrid(torch.arange(size) - c, torch.arange(size) - c, indexing="ij")
    r = size * 0.33
    square = (x.abs() <= r * 0.8) & (y.abs() <= r * 0.8)
    disk = x ** 2 + y ** 2 <= r ** 2
    cross = ((x.abs() <= r * 0.3) | (y.abs() <= r * 0.3)) & (x.abs() <= r) & (y.abs() <= r)
    triangle = (y <= r * 0.8) & (y >= -r) & (x.abs() <= (y + r) * 0.55)
    return torch.stack([square, disk, cross, triangle]).float()


def shapes(split: str = "train", correlation: float = 1.0, seed: int = 0, size: int = 16, n: int = 512,
           classes: int = 4) -> ImageSet:
    """`n` images: shape = label; object and background colour equal the label with probability
    `correlation` (train) or are uniform (test), each colour jittered a little per image."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not 1 <= classes <= len(SHAPES):
        raise ValueError(f"classes must be 1..{len(SHAPES)}, got {classes}")
    if not 0.0 <= correlation <= 1.0:
        raise ValueError(f"correlation must be in [0, 1], got {correlation}")
    g = torch.Generator().manual_seed(seed * 2 + (split == "test"))
    labels = torch.randint(classes, (n,), generator=g)
    p = correlation if split == "train" else 0.0

    def tied() -> torch.Tensor:
        keep = torch.rand(n, generator=g) < p
        return torch.where(keep, labels, torch.randint(classes, (n,), generator=g))

    texture, background = tied(), tied()
    m = _masks(size)[labels][:, None]
    fg = (COLOURS[texture] + 0.03 * torch.randn(n, 3, generator=g)).clamp(0, 1)[:, :, None, None]
    bg = (BACKGROUNDS[background] + 0.03 * torch.randn(n, 3, generator=g)).clamp(0, 1)[:, :, None, None]
    images = (m * fg + (1 - m) * bg).mul(255).round().to(torch.uint8)
    return ImageSet(images, labels, {"shape": labels, "texture": texture, "background": background},
                    list(SHAPES[:classes]))
