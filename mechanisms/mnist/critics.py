"""Discriminators for the MNIST graphs, conditioned on the class label (reference recipe)."""
from __future__ import annotations

import torch
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
    textured images where an MLP over pixels is too weak."""

    def __init__(self, classes: int | None, channels: int = 3, size: int = 32, width: int = 32,
                 batch_norm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = channels
        for i in range(3):
            layers.append(nn.Conv2d(c, width * 2 ** i, 4, 2, 1, bias=not (batch_norm and i)))
            if batch_norm and i:  # DCGAN: no norm on the first layer
                layers.append(nn.BatchNorm2d(width * 2 ** i))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c = width * 2 ** i
        self.features = nn.Sequential(*layers)
        self.out = nn.Linear(c * (size // 8) ** 2, 1)
        self.embed = nn.Embedding(classes, c * (size // 8) ** 2) if classes else None

    def forward(self, image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(image).flatten(1)
        out = self.out(h)
        if self.embed is not None:
            out = out + (self.embed(label) * h).sum(1, keepdim=True)
        return out
