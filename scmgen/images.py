"""Image grids worth putting in a paper: labelled rows and columns, upscaled small images."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from scmgen.data import to_uint8


def grid_image(images: torch.Tensor, nrow: int, row_labels: list[str] | None = None,
               col_labels: list[str] | None = None, title: str = "", scale: int = 0) -> Image.Image:
    """Tile images in [-1, 1] into a PIL image with optional row/column labels and a title.
    Small images (MNIST's 32 px) are upscaled with nearest neighbours so pixels stay crisp."""
    from torchvision.utils import make_grid  # imported here: torchvision costs ~165 MiB and 2 s at start-up

    images = images.detach().float().cpu()
    if scale == 0:
        scale = max(1, 96 // images.shape[-1])
    if scale > 1:
        images = F.interpolate(images, scale_factor=scale, mode="nearest")
    grid = make_grid(to_uint8(images), nrow=nrow, padding=2, pad_value=255)
    tile = Image.fromarray(grid.permute(1, 2, 0).numpy())
    font = ImageFont.load_default()
    left = 10 + max((len(s) for s in row_labels or []), default=0) * 7 if row_labels else 0
    top = (16 if col_labels else 0) + (18 if title else 0)
    canvas = Image.new("RGB", (tile.width + left, tile.height + top), "white")
    canvas.paste(tile, (left, top))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 2), title, fill="black", font=font)
    cell = images.shape[-1] + 2
    for i, label in enumerate(col_labels or []):
        draw.text((left + 2 + i * cell + cell // 2 - 3 * len(label), top - 14), label, fill="black", font=font)
    for i, label in enumerate(row_labels or []):
        draw.text((4, top + 2 + i * cell + cell // 2 - 6), label, fill="black", font=font)
    return canvas


def save_image_atomic(image: Image.Image, path: str | Path) -> Path:
    """Write a PNG under a temporary name and rename it, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG")
    tmp.replace(path)
    return path
