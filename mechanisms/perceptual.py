"""Perceptual losses on frozen ImageNet backbones: LPIPS and the Gram-matrix style loss of CGN.

Backbone weights are torchvision's ImageNet files, looked up without any download: first the
scmgen weights cache (`scmgen weights fetch vgg16` puts vgg16-397923af.pth in <cache>/vgg16),
then torch.hub's cache ($TORCH_HOME/hub/checkpoints, where torchvision itself keeps them). With
neither, the backbone is random: that is said in one logged warning line and recorded in
`scmgen.weights.used_random_init()`, so every output made that way is marked, because a loss on
random features trains something, but not what the CGN recipe trains.
"""
from __future__ import annotations

import logging
import pickle
import warnings
from pathlib import Path
from typing import Sequence

import lpips
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from scmgen import weights
from scmgen.plugins import Loss, NodeInfo, check_shape

log = logging.getLogger(__name__)

# torchvision's ImageNet weights per architecture; the file name (with its sha256 prefix) is the
# one torch.hub and the scmgen cache both use.
_TORCHVISION_WEIGHTS = {
    "vgg16": torchvision.models.VGG16_Weights.IMAGENET1K_V1,
    "alexnet": torchvision.models.AlexNet_Weights.IMAGENET1K_V1,
    "squeezenet1_1": torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1,
}

# VGG16's convolutional part as torchvision numbers it ("M" = 2x2 max-pool), so that
# "features.<i>.*" keys of its state dict load unchanged; the style layers are the ReLUs right
# before each of the first four pools.
_VGG16_CONFIG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M")
VGG_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
_VGG_TAPS = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22}

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def weights_file(arch: str) -> str:
    """torchvision's file name for the ImageNet weights of `arch`, e.g. 'vgg16-397923af.pth'."""
    return Path(_TORCHVISION_WEIGHTS[arch].url).name


def _load(path: Path) -> dict[str, torch.Tensor]:
    """A state dict read with weights_only; a file that is not one is a ValueError (a spec error
    naming the loss), not a traceback."""
    unreadable = (RuntimeError, EOFError, pickle.UnpicklingError)
    try:
        # mmap reads only the tensors used (VGG16's classifier is 470 of its 528 MiB)
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except unreadable:  # torchvision's older files predate the zip format that mmap needs
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except unreadable as e:
            raise ValueError(f"cannot read {path} as a state dict ({type(e).__name__}: "
                             f"{str(e).splitlines()[0]})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, expected a state dict")
    return state


def imagenet_state_dict(arch: str, user: str) -> dict[str, torch.Tensor] | None:
    """The ImageNet state dict of torchvision model `arch` from the scmgen cache or torch.hub's
    cache, or None after logging one warning line (naming `user`) and recording `arch` as randomly
    initialised. Never downloads: offline machines must not hang on a request."""
    name = weights_file(arch)
    mine = weights.entry_dir(arch) / name
    hub = Path(torch.hub.get_dir()) / "checkpoints" / name
    if weights.present(arch) and mine.is_file():
        return _load(mine)
    if hub.is_file():
        return _load(hub)
    log.warning(f"{user}: no ImageNet {arch} weights ({name} is neither in {mine.parent} nor in {hub.parent}; "
                f"`scmgen weights fetch {arch}` gets it): using a RANDOM {arch} backbone, so this is not the "
                f"published loss")
    weights.note_random_init(arch)
    return None


def _features(state: dict[str, torch.Tensor], index: str, arch: str) -> dict[str, torch.Tensor]:
    """The parameters of layer `index` of torchvision's `features` block."""
    prefix = f"features.{index}."
    out = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not out:
        raise ValueError(f"the {arch} weights file has no '{prefix}*' tensors: not a torchvision {arch} state dict")
    return out


def _frozen(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    return module.eval()


class VGG16Features(nn.Module):
    """VGG16's convolutional layers up to the deepest layer asked for, returning the named ReLU
    activations. Takes images in [-1, 1] and applies ImageNet normalisation itself."""

    def __init__(self, layers: Sequence[str], state_dict: dict[str, torch.Tensor] | None) -> None:
        super().__init__()
        unknown = [name for name in layers if name not in _VGG_TAPS]
        if unknown or not layers:
            raise ValueError(f"unknown VGG16 layer(s) {unknown}, expected some of: {', '.join(VGG_LAYERS)}")
        self.taps = {_VGG_TAPS[name]: name for name in layers}
        modules: list[nn.Module] = []
        channels = 3
        for item in _VGG16_CONFIG:
            if item == "M":
                modules.append(nn.MaxPool2d(2, 2))
            else:
                modules += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU()]
                channels = int(item)
        self.layers = nn.Sequential(*modules[: max(self.taps) + 1])
        if state_dict is not None:
            for index, layer in self.layers.named_children():
                if isinstance(layer, nn.Conv2d):
                    layer.load_state_dict(_features(state_dict, index, "vgg16"))
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        _frozen(self)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = ((x + 1) / 2 - self.mean) / self.std
        out: dict[str, torch.Tensor] = {}
        for index, layer in enumerate(self.layers):
            h = layer(h)
            if index in self.taps:
                out[self.taps[index]] = h
        return out


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Per-image channel correlations B x C x C, divided by C*H*W so layers of different sizes
    are comparable (the CGN reference's normalisation). Computed in fp32 even under autocast:
    bf16 sums over H*W lose the small differences the loss is made of."""
    b, c, h, w = features.shape
    with torch.autocast(features.device.type, enabled=False):
        f = features.float().reshape(b, c, h * w)
        return f @ f.transpose(1, 2) / (c * h * w)


def _check_style_weights(layer_weights: Sequence[float], scale: float) -> list[float]:
    values = [float(w) for w in layer_weights]
    if len(values) != len(VGG_LAYERS) or any(w < 0 for w in values) or not any(values):
        raise ValueError(f"weights must be {len(VGG_LAYERS)} non-negative numbers (for {', '.join(VGG_LAYERS)}), "
                         f"not all zero, got {list(layer_weights)}")
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    return values


class StyleDistance(nn.Module):
    """scale * sum_l weights[l] * L1(gram(VGG_l(input)), gram(VGG_l(target))) over relu1_2..relu4_3.

    Only layers with a non-zero weight are computed, and VGG16 stops at the deepest of them."""

    def __init__(self, layer_weights: Sequence[float], scale: float, user: str) -> None:
        super().__init__()
        values = _check_style_weights(layer_weights, scale)
        self.weights = {name: w for name, w in zip(VGG_LAYERS, values) if w}
        self.scale = scale
        self.vgg = VGG16Features(list(self.weights), imagenet_state_dict("vgg16", user))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            want = {k: gram_matrix(v) for k, v in self.vgg(target).items()}
        have = self.vgg(input)
        total = sum(w * F.l1_loss(gram_matrix(have[name]), want[name]) for name, w in self.weights.items())
        return self.scale * total  # type: ignore[return-value]


class GramStyle(Loss):
    """Gram-matrix style loss on VGG16 relu1_2, relu2_2, relu3_3, relu4_3: matches the feature
    statistics (texture and colour) of `input` to those of `target`, not their layout.

    loss = scale * sum_l weights[l] * mean|G_l(input) - G_l(target)|, with G_l the Gram matrix of
    layer l divided by C*H*W. The CGN reference multiplies layer l by w_l^2 * 5000 for its style
    weights w (MNIST colored [.05, .1, .01, 0], double-colored [0, .05, 0, .05], wildlife
    [.01, .05, 0, .01]; ImageNet perceptual [4, 4, 4, 4]): reproduce it with weights = [w_l^2]
    and scale = 5000. Inputs are images in [-1, 1]; they get ImageNet normalisation (the
    reference fed [-1, 1] to VGG as is). The target is a reference: no gradient flows into it."""

    roles = ("input", "target")

    def __init__(self, inputs: dict[str, NodeInfo], weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                 scale: float = 1.0) -> None:
        super().__init__(inputs)
        self.distance = StyleDistance(weights, scale, "perceptual.gram")

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_shape("input", input, (None, 3, None, None))
        check_shape("target", target, (input.shape[0], 3, None, None))
        return self.distance(input, target.detach())


# lpips's trunk names -> torchvision architectures
_LPIPS_NETS = {"vgg": "vgg16", "vgg16": "vgg16", "alex": "alexnet", "squeeze": "squeezenet1_1"}


class LPIPS(Loss):
    """LPIPS distance (Zhang et al., 2018) from the lpips package, averaged over the batch: a
    perceptual reconstruction loss calibrated on human similarity judgements.

    lpips ships only its calibration layers; the trunk (`net`: vgg, alex or squeeze) gets
    torchvision's ImageNet weights from the scmgen or torch.hub cache. lpips is always built
    with a random trunk first (`pnet_rand=True`), because otherwise torchvision would try to
    download the weights. Inputs are images in [-1, 1]; the target gets no gradient."""

    roles = ("input", "target")

    def __init__(self, inputs: dict[str, NodeInfo], net: str = "vgg") -> None:
        super().__init__(inputs)
        if net not in _LPIPS_NETS:
            raise ValueError(f"unknown net '{net}', expected one of: {', '.join(_LPIPS_NETS)}")
        arch = _LPIPS_NETS[net]
        # use_dropout stays on: lpips names its calibration weights after that layout and loads them
        # with strict=False, so without it they would silently stay random; eval mode disables it
        with warnings.catch_warnings():  # torchvision's deprecation notes about lpips's `pretrained=` calls
            warnings.simplefilter("ignore", UserWarning)
            self.model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
        state = imagenet_state_dict(arch, f"perceptual.lpips (net {net})")
        if state is not None:
            for part in self.model.net.children():
                for index, layer in part.named_children():
                    if list(layer.parameters()):
                        layer.load_state_dict(_features(state, index, arch))
        _frozen(self)

    def train(self, mode: bool = True) -> "LPIPS":
        """Always eval: a fixed metric has no training mode (its dropout must stay off)."""
        return super().train(False)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_shape("input", input, (None, 3, None, None))
        check_shape("target", target, tuple(input.shape))
        return self.model(input, target.detach()).mean()
