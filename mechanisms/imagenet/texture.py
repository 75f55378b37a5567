"""The ImageNet CGN's texture loss: the texture backbone must reproduce the object's texture.

Its target is a patch grid cut from the teacher's image where the mask says "object": only the
object's surface statistics, no shape, so the texture mechanism learns texture and not the
object. The loss is the Gram style loss between the texture image and that grid.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from mechanisms.perceptual import StyleDistance
from scmgen.plugins import Loss, NodeInfo, check_shape


def _check_grid(patch: int, top: int, grid: int, size: int) -> None:
    if min(patch, top, grid, size) < 1:
        raise ValueError(f"patch, top, grid and size must be positive, got {patch}, {top}, {grid}, {size}")
    if top > max(size - patch + 1, 0) ** 2:
        raise ValueError(f"top {top} exceeds the {max(size - patch + 1, 0) ** 2} patches of {patch}x{patch} "
                         f"in a {size}x{size} image")


def _resize(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    # bilinear (antialiased when shrinking) stays within the input's range, so the grid holds only
    # colours of the image; the reference's bicubic overshoots at edges
    # (in fp32: the CPU's antialiased kernel has no bf16 version, and the grid needs no gradient)
    return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False, antialias=True)


@torch.no_grad()
def patch_grid(image: torch.Tensor, mask: torch.Tensor, patch: int = 15, top: int = 100, grid: int = 6,
               size: int = 128, out_size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """A grid x grid tiling of patches of `image` sampled from its most masked region.

    `image` (B, C, H, W) and `mask` (B, 1 or C, H', W'; channels averaged) are resized to size x size; every
    patch x patch window is scored by its mean mask value; the `top` best windows of each image
    are kept and grid*grid of them drawn uniformly with replacement (global torch RNG, on the CPU,
    so a resumed run draws the same) and tiled. Returns (B, C, grid*patch, grid*patch), resized
    to `out_size` when given. No gradient: it is a target."""
    b, c = image.shape[:2]
    check_shape("mask", mask, (b, None, None, None))
    _check_grid(patch, top, grid, size)
    windows = size - patch + 1
    img = _resize(image, size)
    m = _resize(mask.float().mean(1, keepdim=True), size)
    scores = F.avg_pool2d(m, patch, stride=1).flatten(1)  # (B, windows^2): mean mask per window
    best = scores.topk(top, dim=1).indices  # (B, top)
    draw = torch.randint(top, (b, grid * grid)).to(best.device)
    chosen = best.gather(1, draw)  # (B, grid^2) window indices
    rows, cols = chosen // windows, chosen % windows
    all_windows = img.unfold(2, patch, 1).unfold(3, patch, 1)  # (B, C, windows, windows, p, p), a view
    batch = torch.arange(b, device=img.device)[:, None].expand_as(rows)
    patches = all_windows[batch, :, rows, cols]  # (B, grid^2, C, p, p)
    tiled = patches.reshape(b, grid, grid, c, patch, patch).permute(0, 3, 1, 4, 2, 5)
    out = tiled.reshape(b, c, grid * patch, grid * patch)
    return out if out_size is None else _resize(out, out_size)


class TexturePatches(Loss):
    """CGN texture loss: Gram style distance between the texture mechanism's image (`texture`)
    and a patch grid (`patch_grid`) cut from the teacher's image (`target`) where `mask` is
    highest, upsampled to the texture's size.

    loss = scale * sum_l weights[l] * mean|G_l(texture) - G_l(grid)| on VGG16 relu1_2..relu4_3.
    The reference multiplies layer l by w_l^2 * 5000 with w = [0, 5, 5, 0] and no further loss
    weight; the defaults (weights [0, 5, 5, 0], scale 5000) with the graph's loss weight 5 give
    exactly that: 5 * 5 * 5000 = 5^2 * 5000. Images in [-1, 1]."""

    roles = ("texture", "target", "mask")

    def __init__(self, inputs: dict[str, NodeInfo], patch: int = 15, top: int = 100, grid: int = 6, size: int = 128,
                 weights: Sequence[float] = (0.0, 5.0, 5.0, 0.0), scale: float = 5000.0) -> None:
        super().__init__(inputs)
        _check_grid(patch, top, grid, size)
        self.patch, self.top, self.grid, self.size = patch, top, grid, size
        self.distance = StyleDistance(weights, scale, "imagenet.texture_patches")

    def forward(self, texture: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        check_shape("texture", texture, (None, 3, None, None))
        check_shape("target", target, (texture.shape[0], 3, None, None))
        grid = patch_grid(target.detach(), mask.detach(), self.patch, self.top, self.grid, self.size,
                          out_size=tuple(texture.shape[-2:]))
        return self.distance(texture, grid)
