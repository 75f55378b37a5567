"""Small class-conditional convolutional generators: the MNIST CGN's shape, texture and
background mechanisms (reference recipe: noise + label embedding -> linear -> 8x8 -> x2 upsampling
blocks), and the plain conditional generator of the GAN baseline."""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from mechanisms.losses import variation as mask_variation
from scmgen.plugins import Mechanism, NodeInfo, check_shape


def up_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True))


class ConditionalGenerator(Mechanism):
    """(noise, label) -> image in [-1, 1]: Linear -> (C, s, s) -> upsampling blocks -> conv -> tanh."""

    roles = ("noise", "label")
    # channels-last activations: the CPU convolutions then skip a layout conversion each way (training on
    # one thread: the Wildlife CGN 1.4x, the cGAN 1.3x images/s; benchmarks/mnist_train_step.py)
    memory_format = torch.channels_last

    def __init__(self, inputs: dict[str, NodeInfo], width: int = 32, init_size: int = 8, out_size: int = 32,
                 channels: int = 3) -> None:
        super().__init__(inputs)
        if inputs["noise"].kind != "noise" or inputs["label"].kind != "label":
            raise ValueError("input 'noise' must be a noise node and 'label' a label node")
        steps = math.log2(out_size / init_size)
        if steps < 1 or steps != int(steps):
            raise ValueError(f"out_size/init_size must be a power of two >= 2, got {out_size}/{init_size}")
        self.classes, self.noise_dim = inputs["label"].classes, inputs["noise"].dim
        self.init_size, self.out_size = init_size, out_size
        self.embed = nn.Embedding(self.classes, self.classes)
        self.fc = nn.Linear(self.noise_dim + self.classes, 2 * width * init_size ** 2)
        self.body = nn.Sequential(*self.blocks(2 * width, width, int(steps)))
        self.head = self.make_head(width, channels)

    @staticmethod
    def blocks(cin: int, width: int, n: int) -> list[nn.Module]:
        """64 -> 64 -> ... -> 32: width doubled until the last block (reference layout)."""
        chans = [cin] * n + [width]
        return [up_block(chans[i], chans[i + 1]) for i in range(n)]

    def make_head(self, width: int, channels: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(width, channels, 3, padding=1), nn.Tanh())

    def features(self, noise: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        check_shape("noise", noise, (None, self.noise_dim))
        check_shape("label", label, (noise.shape[0],))
        h = self.fc(torch.cat([noise, self.embed(label)], dim=1))
        h = h.view(h.shape[0], -1, self.init_size, self.init_size).contiguous(memory_format=self.memory_format)
        return self.body(h)

    def forward(self, noise: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(noise, label))


class MaskGenerator(ConditionalGenerator):
    """The shape mechanism: a one-channel mask in [1e-4, 0.9999]. `activation: clamp` is the
    reference (instance norm, then clamp: saturates to hard 0/1 quickly, but clamped pixels get
    no gradient); `sigmoid` keeps a gradient everywhere.

    Orientation: the composer gives the same image for (m, f, b) and (1 - m, b, f), so nothing in
    training says which layer is the object, and a class can come out with its mask on the
    background. Then do(texture) paints that class's background, and in counterfactuals the
    colour of the stroke depends on the shape class, a shortcut that does not exist in real images
    (measured in issue 3's note). With `orient: true` the mask flips, after training, every class
    whose mean mask exceeds one half: objects are the smaller layer. For such a class the object's
    appearance was learned by the background mechanism and vice versa; texture mechanisms bound to
    this mask with `swap_with` / `oriented_by` trade places for it (see TextureGenerator)."""

    def __init__(self, inputs: dict[str, NodeInfo], width: int = 32, init_size: int = 8, out_size: int = 32,
                 activation: str = "clamp", initial_coverage: float | None = None, orient: bool = True) -> None:
        if activation not in ("clamp", "sigmoid"):
            raise ValueError(f"activation must be 'clamp' or 'sigmoid', got {activation!r}")
        self.activation, self.orient = activation, orient
        super().__init__(inputs, width, init_size, out_size, channels=1)
        self.register_buffer("inverted", torch.zeros(self.classes, dtype=torch.bool))  # per class: flip the mask
        if initial_coverage is not None:
            # start with a mask covering about this fraction of the image (sigmoid only): an object
            # smaller than its background from the first step keeps the mask from settling inverted
            if activation != "sigmoid" or not 0 < initial_coverage < 1:
                raise ValueError("initial_coverage needs activation: sigmoid and a value in (0, 1)")
            nn.init.constant_(self.head.bias, math.log(initial_coverage / (1 - initial_coverage)))

    @staticmethod
    def blocks(cin: int, width: int, n: int) -> list[nn.Module]:
        chans = [cin] + [width] * n
        return [up_block(chans[i], chans[i + 1]) for i in range(n)]

    def make_head(self, width: int, channels: int) -> nn.Module:
        conv = nn.Conv2d(width, 1, 3, padding=1)
        return nn.Sequential(conv, nn.InstanceNorm2d(1)) if self.activation == "clamp" else conv

    def forward(self, noise: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        m = self.head(self.features(noise, label)).float()  # fp32: bf16 rounds 0.9999 to 1
        m = (m if self.activation == "clamp" else torch.sigmoid(m)).clamp(1e-4, 0.9999)
        return torch.where(self.inverted[label].view(-1, 1, 1, 1), 1 - m, m)

    @torch.no_grad()
    def class_statistics(self, per_class: int = 100, seed: int = 0) -> dict[str, torch.Tensor]:
        """Per class, over `per_class` fixed noise draws (the global RNG is left alone): `coverage`,
        the mean mask, and `variation`, its mean absolute step between neighbouring pixels. A
        clean digit covers 5-25% and varies only along its outline (variation about 0.07-0.19
        in the shipped runs); an empty mask has coverage near 0 and speckle variation above 0.3."""
        was_training = self.training
        self.eval()
        g = torch.Generator().manual_seed(seed)
        device = self.inverted.device
        coverage, variation = [], []
        for c in range(self.classes):
            m = self(torch.randn(per_class, self.noise_dim, generator=g).to(device),
                     torch.full((per_class,), c, device=device))
            coverage.append(m.mean())
            variation.append(mask_variation(m))
        self.train(was_training)
        return {"coverage": torch.stack(coverage).cpu(), "variation": torch.stack(variation).cpu()}

    def coverage(self) -> torch.Tensor:
        """Mean mask of each class (see class_statistics)."""
        return self.class_statistics()["coverage"]

    def diagnostics(self) -> dict[str, float]:
        return {f"{name}/class_{c}": float(v) for name, values in self.class_statistics().items()
                for c, v in enumerate(values)}

    def after_training(self) -> None:
        if self.orient:
            self.inverted ^= (self.coverage() > 0.5).to(self.inverted.device)


class TextureGenerator(ConditionalGenerator):
    """A texture mechanism with CGN's MNIST texture bias: in training the map is tiled 2x2 and a
    random window cropped (a random cyclic shift per sample), so it cannot carry the digit's shape.
    At evaluation it is deterministic, so counterfactuals reuse exactly the same texture. With
    `shift_samples: false` it is drawn unshifted, a fixed-phase slice of what the critic judged in
    training; with `true` the shift stays, read off the noise (`noise_offsets`), so samples come
    from the distribution the mechanism was trained as and the same noise still gives the same
    texture in the same place (Wildlife MNIST's photographic textures, three seeds of the fast
    recipe: Original + CGN validation accuracy 67.1 -> 71.8%; results/ablations/texture_shift).
    Used for the foreground and, in scmgen's recipes, the background too: then the mask is the
    only mechanism that can place structure, which is what makes the shape disentangle fast.

    Orientation: with `swap_with` (the other texture node) and `oriented_by` (the mask node), a
    label whose mask class the orientation flipped is drawn by the other texture's network. In
    training all labels are tied to y, so for such a label the object's texture was learned by the
    background mechanism; without the swap, counterfactuals would never show that texture on a
    digit, while test images do. Factual samples are unchanged by it."""

    def __init__(self, inputs: dict[str, NodeInfo], width: int = 32, init_size: int = 8, out_size: int = 32,
                 swap_with: str | None = None, oriented_by: str | None = None, shift_samples: bool = False) -> None:
        if (swap_with is None) != (oriented_by is None):
            raise ValueError("swap_with and oriented_by go together: the other texture node and the mask node")
        super().__init__(inputs, width, init_size, out_size)
        if shift_samples and self.noise_dim < 2:
            raise ValueError(f"shift_samples reads the shift off two noise coordinates; the noise has {self.noise_dim}")
        self.swap_with, self.oriented_by, self.shift_samples = swap_with, oriented_by, shift_samples
        self._bound: tuple[ConditionalGenerator, MaskGenerator] | tuple[()] = ()

    def bind(self, mechanisms: Mapping[str, Mechanism]) -> None:
        if self.swap_with is None:
            return
        partner, mask = mechanisms.get(self.swap_with), mechanisms.get(self.oriented_by)
        if not isinstance(partner, ConditionalGenerator) or partner is self:
            raise ValueError(f"swap_with: expected another texture node of this graph, got {self.swap_with!r}")
        if not isinstance(mask, MaskGenerator):
            raise ValueError(f"oriented_by: expected an mnist.shape node of this graph, got {self.oriented_by!r}")
        if (partner.noise_dim, partner.classes, mask.classes) != (self.noise_dim, self.classes, self.classes):
            raise ValueError(f"swap_with: {self.swap_with!r} and {self.oriented_by!r} must have this node's "
                             f"noise size {self.noise_dim} and {self.classes} classes")
        # a plain tuple: the other mechanisms stay out of this module's parameters and state dict
        object.__setattr__(self, "_bound", (partner, mask))

    def forward(self, noise: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        swapped = self._bound[1].inverted[label] if self._bound else None
        if swapped is None or not swapped.any():
            x = super().forward(noise, label)
        else:  # each network draws only its own rows
            theirs = ConditionalGenerator.forward(self._bound[0], noise[swapped], label[swapped])
            x = theirs.new_empty((len(label), *theirs.shape[1:]))
            x[swapped] = theirs
            own = ~swapped
            if own.any():
                x[own] = super().forward(noise[own], label[own]).to(x.dtype)
        if self.training:
            return random_cyclic_shift(x)
        return cyclic_shift(x, *noise_offsets(noise, x.shape[-2:])) if self.shift_samples else x


def random_cyclic_shift(x: torch.Tensor) -> torch.Tensor:
    """Roll each image by its own random (dy, dx): a random crop of the 2x2 tiling."""
    b, _, h, w = x.shape
    return cyclic_shift(x, torch.randint(h, (b,), device=x.device), torch.randint(w, (b,), device=x.device))


def noise_offsets(noise: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A (dy, dx) per image from its first two noise coordinates through the standard normal CDF:
    uniform over the positions for N(0, 1) noise, as training's random shift is, and a function of
    the noise, so that a counterfactual keeps the factual image's texture where it was."""
    u = torch.special.ndtr(noise[:, :2].float())
    h, w = size
    return (u[:, 0] * h).long().clamp_(max=h - 1), (u[:, 1] * w).long().clamp_(max=w - 1)


def cyclic_shift(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Roll each image by its own (dy, dx), wrapping around: a crop of the 2x2 tiling."""
    b, c, h, w = x.shape
    rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None]) % h  # (B, H)
    cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None]) % w  # (B, W)
    idx = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, h * w).expand(-1, c, -1)
    return x.flatten(2).gather(2, idx).view_as(x)
