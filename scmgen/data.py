"""In-memory image data sets: every batch is a slice of tensors already in RAM.

MNIST-sized data fits in memory many times over, so keeping it as one uint8 tensor avoids the
per-sample Python overhead of a DataLoader and makes epoch order a pure function of the seed,
which is what exact resume needs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from scmgen.spec import GraphSpec


@dataclass
class ImageSet:
    """Images as uint8 (N, C, H, W) with their class labels and the factor that made each part.

    `factors` names every generative factor of each image (for the MNIST variants: ``shape``
    is the digit, ``texture``/``background`` the colour or texture index), so that anti-causal
    predictors, bias labels (LNTL) and environments can be read off without guessing.
    """

    images: torch.Tensor
    labels: torch.Tensor
    factors: dict[str, torch.Tensor] = field(default_factory=dict)
    class_names: list[str] | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        n = self.images.shape[0]
        for name, t in {"labels": self.labels, **self.factors}.items():
            if t.shape[0] != n:
                raise ValueError(f"{name} has {t.shape[0]} rows for {n} images")

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images scaled to [-1, 1] as float32, and their labels."""
        return to_float(self.images[index]), self.labels[index]

    def subset(self, index: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images[index], self.labels[index],
                        {k: v[index] for k, v in self.factors.items()}, self.class_names)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], rounding to nearest."""
    return images.detach().float().add(1.0).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8)


PATH_PARAMS = {"textures", "mnist_root", "root"}


def load_dataset(model_spec: "GraphSpec", source: str, split: str = "train", **overrides: Any) -> ImageSet:
    """Build the graph's data set through its registered plugin, for `split`."""
    from scmgen import registry
    from scmgen.errors import SpecError
    from scmgen.paths import inside

    if model_spec.data is None:
        raise SpecError(source, "data", "this graph has no data section")
    build = registry.get("datasets", model_spec.data.plugin)
    params = {**model_spec.data.params, **overrides}
    for key in PATH_PARAMS & set(params):
        value = params[key]
        if isinstance(value, str) and not Path(value).is_absolute() and Path(source).is_file():
            # relative paths in a graph file are relative to that file, and may not leave its folder
            params[key] = str(inside(Path(source).parent, value, source, f"data.params.{key}"))
    try:
        return build(split=split, **params)
    except TypeError as e:
        raise SpecError(source, "data.params", f"plugin '{model_spec.data.plugin}': {e}") from None
    except ValueError as e:
        raise SpecError(source, "data.params", str(e)) from None
