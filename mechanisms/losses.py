"""Loss plugins shared by the MNIST and ImageNet graphs."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from scmgen.plugins import AdversarialLoss, Loss, NodeInfo, check_shape


class LeastSquaresGAN(AdversarialLoss):
    """LSGAN: the generator pushes D(fake) to 1; the critic loss is (D(real)->1 + D(fake)->0)/2.
    `r1` > 0 adds Mescheder et al.'s (2018) R1 penalty r1/2 * E|grad_x D(real)|^2 to the critic:
    a critic kept smooth around the real images makes GAN training converge locally, where without
    it a class of the MNIST CGN could collapse into speckle (results/ablations/r1_ema)."""

    def __init__(self, inputs: dict[str, NodeInfo], r1: float = 0.0) -> None:
        super().__init__(inputs)
        if r1 < 0:
            raise ValueError(f"r1 must be >= 0, got {r1}")
        self.r1 = r1

    def generator_loss(self, critic: nn.Module, fake: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
        d = critic(fake, label)
        return F.mse_loss(d, torch.ones_like(d))

    def critic_loss(self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                    real_label: torch.Tensor | None, fake_label: torch.Tensor | None) -> torch.Tensor:
        if self.r1:
            leaf = real.detach().requires_grad_(True)
            real = leaf.clone()  # the critic sees a non-leaf: module hooks (FlopCounterMode) refuse leaves in grad()
        d_real, d_fake = critic(real, real_label), critic(fake, fake_label)
        loss = (F.mse_loss(d_real, torch.ones_like(d_real)) + F.mse_loss(d_fake, torch.zeros_like(d_fake))) / 2
        if self.r1:
            (grad,) = torch.autograd.grad(d_real.float().sum(), leaf, create_graph=True)
            loss = loss + self.r1 / 2 * grad.float().pow(2).flatten(1).sum(1).mean()
        return loss


class BinaryMask(Loss):
    """Mean binary entropy (log2) of the mask: pushes every pixel to 0 or 1, so the mask says
    clearly what is object and what is background."""

    roles = ("mask",)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        m = mask.float()
        return -(m * torch.log2(m) + (1 - m) * torch.log2(1 - m)).mean()


class MaskInterval(Loss):
    """Hinge keeping each image's mean mask within [low, high]: no empty or full masks."""

    roles = ("mask",)

    def __init__(self, inputs: dict[str, NodeInfo], low: float = 0.1, high: float = 0.9) -> None:
        super().__init__(inputs)
        if not 0 <= low < high <= 1:
            raise ValueError(f"expected 0 <= low < high <= 1, got low={low}, high={high}")
        self.low, self.high = low, high

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        mean = mask.float().flatten(1).mean(1)
        return (F.relu(self.low - mean) + F.relu(mean - self.high)).mean()


class MaskVariation(Loss):
    """Mean absolute difference between neighbouring mask pixels (anisotropic total variation): a
    clean digit's mask changes only along its outline, speckle at almost every pixel, so a small
    weight keeps a mask that is still undecided from splitting into speckle."""

    roles = ("mask",)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return variation(mask.float())


class MaskDiversity(Loss):
    """Mode seeking (Mao et al. 2019) for the shape mechanism: over pairs of samples of the same
    shape class in the batch, the inverse of how far apart their masks are per unit of distance
    between their noise vectors. A mechanism that draws one typical digit per class whatever the
    noise scores high; one whose masks follow the noise scores low."""

    roles = ("mask", "noise", "label")

    def __init__(self, inputs: dict[str, NodeInfo], eps: float = 1e-5) -> None:
        super().__init__(inputs)
        if inputs["noise"].kind != "noise" or inputs["label"].kind != "label":
            raise ValueError("input 'noise' must be a noise node and 'label' a label node")
        self.eps = eps

    def forward(self, mask: torch.Tensor, noise: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        order = torch.argsort(label, stable=True)  # neighbours of one class are pairs
        m, u, y = mask[order].float().flatten(1), noise[order].float(), label[order]
        same = y[1:] == y[:-1]
        if not bool(same.any()):
            return mask.float().sum() * 0.0
        apart = (m[1:] - m[:-1]).abs().mean(1)[same] / (u[1:] - u[:-1]).abs().mean(1)[same]
        return (1.0 / (apart + self.eps)).mean()


class LayerColours(Loss):
    """Chamfer distance, in colour space, between the pixels of the two texture layers and those of a
    real image of the same class: every layer pixel near some colour of the real image and every
    real colour near some layer pixel (squared, over `pixels` random pixels of each).

    The adversarial loss only trains what the mask shows. When a class's mask empties, its
    foreground gets no gradient and drifts to a foreign colour; from then on every stroke the mask
    could draw comes out in that colour, the critic rejects it, and the mask stays empty
    (double-colored seed 1: class 6's foreground went red where its digits are dark green). This
    loss reaches the layers whatever the mask does, and it does not say which layer is the object.
    Sample i must be of the real image i's class: the graph's `train.condition` ties them."""

    roles = ("foreground", "background", "real")

    def __init__(self, inputs: dict[str, NodeInfo], pixels: int = 128) -> None:
        super().__init__(inputs)
        if pixels <= 0:
            raise ValueError(f"pixels must be positive, got {pixels}")
        self.pixels = pixels

    def forward(self, foreground: torch.Tensor, background: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        check_shape("real", real, (foreground.shape[0], foreground.shape[1], None, None))

        def some(x: torch.Tensor) -> torch.Tensor:  # (n, pixels, channels)
            flat = x.float().flatten(2)
            return flat[:, :, torch.randint(flat.shape[2], (self.pixels,), device=x.device)].transpose(1, 2)

        layers, target = torch.cat([some(foreground), some(background)], 1), some(real.detach())
        # which pixel is nearest needs no gradient (cdist finds it by matrix products); only the nearest
        # pairs' distances do. Differentiating the min over the whole (n, layer, real) distance tensor
        # made a double-colored CGN step 1.46x slower instead of 1.11x (benchmarks/RESULTS.md)
        with torch.no_grad():
            distance = torch.cdist(layers, target)  # (n, layer pixels, real pixels)
            to_real, to_layer = distance.argmin(2), distance.argmin(1)
        return squared_distance(layers, nearest(target, to_real)) + squared_distance(target, nearest(layers, to_layer))


def nearest(points: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """points (n, p, c) at index (n, q): the (n, q, c) points each index names."""
    return points.gather(1, index[..., None].expand(-1, -1, points.shape[2]))


def squared_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over points of the squared Euclidean distance between (n, p, c) point sets, pair by pair."""
    return (a - b).pow(2).sum(-1).mean()


def variation(m: torch.Tensor) -> torch.Tensor:
    """Mean absolute step between vertically and between horizontally neighbouring pixels, summed."""
    return (m[..., 1:, :] - m[..., :-1, :]).abs().mean() + (m[..., :, 1:] - m[..., :, :-1]).abs().mean()


class L1(Loss):
    """Mean absolute error to a target node (reconstruction of a teacher's pseudo ground truth)."""

    roles = ("input", "target")

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(input, target.detach())
