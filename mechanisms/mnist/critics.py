"""Discriminators for the MNIST graphs, conditioned on the class label (reference recipe)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLPCritic(nn.Module):
    """MLP of width 512 over the flattened image concatenated with a label embedding (reference).
    `projection: true` adds a projection term <embed(y), features> (Miyato & Koyama 2018), which
    gives the generators a much stronger class signal than the concatenated 10 numbers."""

    def __init__(self, classes: int | None, channels: int = 3, size: int = 32, width: int = 512,
                 dropout: float = 0.4, projection: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(classes, classes) if classes else None
        n_in = channels * size * size + (classes or 0)
        self.features = nn.Sequential(
            nn.Linear(n_in, width), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(width, width), nn.Dropout(dropout), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(width, width), nn.Dropout(dropout), nn.LeakyReLU(0.2, inplace=True))
        self.out = nn.Linear(width, 1)
        self.project = nn.Embedding(classes, width) if classes and projection else None

    def forward(self, image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        h = image.flatten(1)
        if self.embed is not None:
            h = torch.cat([h, self.embed(label)], dim=1)
        h = self.features(h)
        out = self.out(h)
        if self.project is not None:
            out = out + (self.project(label) * h).sum(1, keepdim=True)
        return out


class ConvCritic(nn.Module):
    """A small strided conv net (width 32) with a projection on the label embedding, for
    textured images where an MLP over pixels is too weak. `minibatch_std` appends the spread of
    the last features over the batch (`batch`, Karras et al. 2018) or over the batch's images of
    the same class (`class`) as one more channel: a generator that draws too few shapes per class
    then looks unlike the real batch, which a per-image critic cannot see."""

    def __init__(self, classes: int | None, channels: int = 3, size: int = 32, width: int = 32,
                 batch_norm: bool = False, minibatch_std: str | None = None) -> None:
        super().__init__()
        if minibatch_std not in (None, "batch", "class"):
            raise ValueError(f"minibatch_std must be 'batch', 'class' or null, got {minibatch_std!r}")
        if minibatch_std == "class" and not classes:
            raise ValueError("minibatch_std: 'class' needs a class-conditional critic")
        self.minibatch_std, self.classes = minibatch_std, classes
        layers: list[nn.Module] = []
        c = channels
        for i in range(3):
            layers.append(nn.Conv2d(c, width * 2 ** i, 4, 2, 1, bias=not (batch_norm and i)))
            if batch_norm and i:  # DCGAN: no norm on the first layer
                layers.append(nn.BatchNorm2d(width * 2 ** i))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c = width * 2 ** i
        self.features = nn.Sequential(*layers)
        n = (c + (minibatch_std is not None)) * (size // 8) ** 2
        self.out = nn.Linear(n, 1)
        self.embed = nn.Embedding(classes, n) if classes else None

    def forward(self, image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(image)
        if self.minibatch_std is not None:
            if self.minibatch_std == "class":
                spread = group_spread(h, label, self.classes)
            else:  # the whole batch is one group
                spread = group_spread(h, torch.zeros_like(h[:, 0, 0, 0], dtype=torch.long), 1)
            h = torch.cat([h, spread.to(h.dtype)], dim=1)
        h = h.flatten(1)
        out = self.out(h)
        if self.embed is not None:
            out = out + (self.embed(label) * h).sum(1, keepdim=True)
        return out


def group_spread(h: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    """(B, C, H, W) features -> (B, 1, H, W): per sample, the standard deviation of each feature
    over the samples of its group in the batch, averaged over channels (fp32; a sample alone in
    its group gets about 0)."""
    x = h.float().flatten(1)
    member = F.one_hot(groups, n_groups).to(x.dtype)  # (B, G)
    count = member.sum(0).clamp_min(1)[:, None]
    deviation = x - member @ (member.T @ x / count)
    std = (member.T @ deviation.square() / count + 1e-8).sqrt()  # (G, D)
    return (member @ std).view_as(h).mean(1, keepdim=True)
