"""BigGAN-deep generators (Brock et al., 2019) as CGN mechanisms, via pytorch-pretrained-biggan.

The ImageNet CGN uses four copies of one pretrained BigGAN-deep-256: a frozen teacher and the
shape, texture and background backbones fine-tuned from it. Pretrained files come from the
scmgen weights cache in the layout pytorch-pretrained-biggan publishes (config.json plus
pytorch_model.bin, a plain state dict); they are read with `weights_only=True` and loaded
strictly, so a wrong or truncated file is an error instead of a half-random generator.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from pytorch_pretrained_biggan import BigGAN, BigGANConfig
from pytorch_pretrained_biggan.model import GenBlock
from torch import nn
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.utils.checkpoint import checkpoint

from scmgen import weights
from scmgen.noise import truncated_noise
from scmgen.plugins import Mechanism, NodeInfo, check_shape

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "pytorch_model.bin"

_HOST = "https://s3.amazonaws.com/models.huggingface.co/biggan/"


def _deep_layers(mults: list[int]) -> list[list[Any]]:
    """BigGAN-deep's layers from its channel multipliers per resolution: at each resolution a
    block that keeps the channels, then one that upsamples x2 and goes to the next multiplier."""
    layers: list[list[Any]] = []
    for cin, cout in zip(mults, mults[1:]):
        layers += [[False, cin, cin], [True, cin, cout]]
    return layers


# The three released configurations (pytorch-pretrained-biggan's config.json files); random
# initialisation (--random-init) builds these, so graphs keep their real shapes and sizes.
OFFICIAL_CONFIGS: dict[str, dict[str, Any]] = {
    f"biggan-deep-{size}": {"output_dim": size, "z_dim": 128, "class_embed_dim": 128, "channel_width": 128,
                            "num_classes": 1000, "layers": _deep_layers(mults), "attention_layer_position": 8,
                            "eps": 1e-4, "n_stats": 51}
    for size, mults in ((128, [16, 16, 8, 4, 2, 1]), (256, [16, 16, 8, 8, 4, 2, 1]),
                        (512, [16, 16, 8, 8, 4, 2, 1, 1]))}

for _name in OFFICIAL_CONFIGS:
    weights.add_entry(weights.WeightsEntry(
        _name, f"BigGAN-deep {_name.rsplit('-', 1)[1]} px ImageNet generator (pytorch-pretrained-biggan)",
        files={CONFIG_FILE: (f"{_HOST}{_name}-config.json", None),
               WEIGHTS_FILE: (f"{_HOST}{_name}-pytorch_model.bin", None)},
        kind="biggan"))

# ImageNet backbones of the losses and the invariant classifier, named as torchvision names its
# files; the hex digits in a name start the file's sha256 (torch.hub's convention), checked on fetch.
for _name, _file, _sha_prefix in (("vgg16", "vgg16-397923af.pth", "397923af"),
                                  ("resnet50", "resnet50-0676ba61.pth", "0676ba61")):
    weights.add_entry(weights.WeightsEntry(
        _name, f"torchvision {_name} ImageNet weights (IMAGENET1K_V1)",
        files={_file: (f"https://download.pytorch.org/models/{_file}", _sha_prefix)}, kind="torchvision"))


def biggan_models() -> list[str]:
    """Names a BigGAN mechanism accepts: every weights entry of kind 'biggan', and 'custom'."""
    return sorted(n for n, e in weights.ENTRIES.items() if e.kind == "biggan") + ["custom"]


def make_config(values: Mapping[str, Any]) -> BigGANConfig:
    """A checked BigGANConfig: unknown keys and layer layouts the generator cannot run are
    ValueErrors here, not shape errors deep inside a forward pass. Missing keys keep
    pytorch-pretrained-biggan's defaults (those of the 128 px model)."""
    if not isinstance(values, Mapping):
        raise ValueError(f"a BigGAN config must be a mapping, got {type(values).__name__}")
    defaults = BigGANConfig().to_dict()
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ValueError(f"unknown BigGAN config key(s) {', '.join(unknown)}, expected: {', '.join(sorted(defaults))}")
    cfg = BigGANConfig.from_dict(dict(values))
    layers = [tuple(layer) for layer in cfg.layers]
    if not layers or any(len(layer) != 3 for layer in layers):
        raise ValueError("layers must be a non-empty list of [upsample, in_mult, out_mult]")
    if layers[0][1] != 16 or layers[-1][2] != 1:
        raise ValueError("the first layer's in_mult must be 16 and the last layer's out_mult 1")
    for i, (_, cin, cout) in enumerate(layers):
        if cout not in (cin, cin // 2) or (cin != cout and cin % 2):
            raise ValueError(f"layer {i}: out_mult must equal or halve in_mult, got {cin} -> {cout}")
        if i and layers[i - 1][2] != cin:
            raise ValueError(f"layer {i}: in_mult {cin} does not match the previous out_mult {layers[i - 1][2]}")
    native = 4 * 2 ** sum(bool(up) for up, _, _ in layers)
    if cfg.output_dim != native:
        raise ValueError(f"output_dim is {cfg.output_dim} but the layers upsample 4 px to {native} px")
    if cfg.channel_width < 3:
        raise ValueError(f"channel_width must be at least 3 (RGB), got {cfg.channel_width}")
    attention = cfg.attention_layer_position
    if 0 <= attention < len(layers) and (cfg.channel_width * layers[attention][1]) % 8:
        raise ValueError("the attention layer's channels (channel_width * its in_mult) must divide by 8")
    return cfg


def check_state_dict(expected: Mapping[str, torch.Tensor], got: Mapping[str, Any], source: str) -> None:
    """Raise one ValueError naming the first key that is missing, unexpected or of another shape."""
    for key, value in expected.items():
        if key not in got:
            raise ValueError(f"{source}: missing key '{key}'")
        other = got[key]
        if not isinstance(other, torch.Tensor) or other.shape != value.shape:
            shape = tuple(other.shape) if isinstance(other, torch.Tensor) else type(other).__name__
            raise ValueError(f"{source}: '{key}' has shape {shape}, expected {tuple(value.shape)}")
    extra = [key for key in got if key not in expected]
    if extra:
        raise ValueError(f"{source}: unexpected key '{extra[0]}'")


def read_state_dict(path: Path) -> Mapping[str, Any]:
    """A checkpoint's state dict, unpickling tensors only (never arbitrary objects)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
        raise ValueError(f"{path}: unreadable checkpoint: truncated, corrupt, or not a plain state dict of tensors "
                         f"({type(e).__name__})") from None
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


_ARCHITECTURE = ("output_dim", "z_dim", "num_classes", "channel_width", "layers", "attention_layer_position")


def _architecture(cfg: BigGANConfig) -> dict[str, Any]:
    """The config fields that decide what a model computes and the state dict's shapes."""
    return {key: [list(x) for x in cfg.layers] if key == "layers" else getattr(cfg, key) for key in _ARCHITECTURE}


def load_biggan(folder: Path, name: str | None = None) -> BigGAN:
    """Build the BigGAN that `folder/config.json` describes and load `folder/pytorch_model.bin`
    strictly. With the `name` of an official model, the config must also be that model's."""
    try:
        values = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{folder / CONFIG_FILE}: unreadable config ({e})") from None
    cfg = make_config(values)
    if name in OFFICIAL_CONFIGS:
        got, want = _architecture(cfg), _architecture(make_config(OFFICIAL_CONFIGS[name]))
        for key in want:
            if got[key] != want[key]:
                raise ValueError(f"{folder / CONFIG_FILE} is not {name}'s config: "
                                 f"{key} is {got[key]}, expected {want[key]}")
    net = BigGAN(cfg)
    state = read_state_dict(folder / WEIGHTS_FILE)
    check_state_dict(net.state_dict(), state, str(folder / WEIGHTS_FILE))
    net.load_state_dict(state, strict=True)
    return net


def settle_spectral_norm(net: nn.Module, iterations: int = 10) -> None:
    """Run power iteration on every spectral-normalised weight. Fresh random u and v vectors give
    a near-zero or negative sigma, so eval mode (which reuses u and v) would divide by it and
    produce NaN; this is what a few train-mode forward passes do, without running the network."""
    with torch.no_grad():
        for module in net.modules():
            if not hasattr(module, "weight_u"):
                continue
            w = module.weight_orig.flatten(1)
            u, v = module.weight_u, module.weight_v
            for _ in range(iterations):
                v.copy_(F.normalize(w.t() @ u, dim=0, eps=1e-12))
                u.copy_(F.normalize(w @ v, dim=0, eps=1e-12))


RANDOM_SEED = 0


def random_biggan(cfg: BigGANConfig) -> BigGAN:
    """A randomly initialised BigGAN that runs in eval mode. It is a fixed function of the config
    (its own seed, the global RNG untouched), as pretrained weights are, so the teacher and the
    CGN's fine-tuned copies start from the same weights under --random-init too."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        net = BigGAN(cfg)
        with torch.no_grad():  # allocated with torch.Tensor(n) and never initialised by the library
            net.generator.bn.weight.fill_(1.0)
            net.generator.bn.bias.zero_()
        settle_spectral_norm(net)
    return net


class BigGANMechanism(Mechanism):
    """(noise, label) -> image in [-1, 1] of shape (B, 3, H, W) from a BigGAN-deep generator.

    The noise node is standard normal; the mechanism turns it into BigGAN's truncated latent
    (see `truncated_noise`) and feeds the same truncation to the generator's batch norms.
    `model` names a weights entry of kind 'biggan' (biggan-deep-128/256/512) or is 'custom',
    a randomly initialised generator built from `config` (tests, experiments). `output_size`
    resizes the native output (bilinear, antialiased when shrinking).

    `checkpointing` trades compute for memory when training: each of the generator's blocks
    (the GenBlocks and the self-attention layer) runs under `torch.utils.checkpoint`, so the
    backward pass recomputes a block's activations instead of keeping them, at the cost of about
    one extra forward pass of the generator. Outputs, gradients and the spectral-norm state are
    those of the plain path (see `_checkpointed_forward`). In eval mode, or with gradients
    off, it changes nothing."""

    roles = ("noise", "label")

    def __init__(self, inputs: dict[str, NodeInfo], model: str = "biggan-deep-256", truncation: float = 0.5,
                 output_size: int | None = None, config: dict[str, Any] | None = None,
                 checkpointing: bool = False) -> None:
        super().__init__(inputs)
        if inputs["noise"].kind != "noise" or inputs["label"].kind != "label":
            raise ValueError("input 'noise' must be a noise node and 'label' a label node")
        known = biggan_models()
        if model not in known:
            raise ValueError(f"unknown BigGAN model {model!r}, expected one of: {', '.join(known)}")
        if (model == "custom") != (config is not None):
            raise ValueError("give `config` with model 'custom', and only then")
        if not 0 < truncation <= 1:
            raise ValueError(f"truncation must be in (0, 1], got {truncation}")
        if output_size is not None and output_size < 1:
            raise ValueError(f"output_size must be a positive number of pixels or None, got {output_size}")
        if not isinstance(checkpointing, bool):
            raise ValueError(f"checkpointing must be true or false, got {checkpointing!r}")
        self.checkpointing = checkpointing
        self.net = self._build(model, config)
        cfg = self.net.config
        self.z_dim, self.num_classes, self.native_size = cfg.z_dim, cfg.num_classes, cfg.output_dim
        if inputs["noise"].dim != self.z_dim:
            raise ValueError(f"noise node '{inputs['noise'].name}' has dim {inputs['noise'].dim}, "
                             f"but {model} takes z_dim {self.z_dim}")
        if inputs["label"].classes != self.num_classes:
            raise ValueError(f"label node '{inputs['label'].name}' has {inputs['label'].classes} classes, "
                             f"but {model} has num_classes {self.num_classes}")
        self.truncation = float(truncation)
        self.output_size = output_size or self.native_size

    @staticmethod
    def _build(model: str, config: dict[str, Any] | None) -> BigGAN:
        if config is not None:
            return random_biggan(make_config(config))
        folder = weights.require(model)
        if folder is not None:
            return load_biggan(folder, model)
        if model not in OFFICIAL_CONFIGS:
            raise ValueError(f"no built-in config for {model!r} to initialise randomly; "
                             f"random initialisation knows {', '.join(OFFICIAL_CONFIGS)} and 'custom'")
        return random_biggan(make_config(OFFICIAL_CONFIGS[model]))

    def forward(self, noise: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        check_shape("noise", noise, (None, self.z_dim))
        check_shape("label", label, (noise.shape[0],))
        dtype = self.net.embeddings.weight.dtype
        z = truncated_noise(noise, self.truncation).to(dtype)
        one_hot = F.one_hot(label.long(), self.num_classes).to(dtype)
        if self.checkpointing and self.training and torch.is_grad_enabled():
            image = self._checkpointed_forward(z, one_hot)
        else:
            image = self.net(z, one_hot, self.truncation)
        if self.output_size != self.native_size:
            size = (self.output_size, self.output_size)
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False,
                                  antialias=self.output_size < self.native_size)
        return image

    def _checkpointed_forward(self, z: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
        """`BigGAN.forward` and `Generator.forward` of pytorch-pretrained-biggan 0.1.1, step for
        step, with each block of `generator.layers` under a non-reentrant checkpoint.

        Spectral norm needs care: in training mode its forward pre-hook advances the power
        iteration (updating the u and v buffers in place) each time a layer runs, and the
        backward pass re-runs every checkpointed block. So the power iteration of a block's
        layers is run here, once, as the hook would; the block then runs with those layers in
        eval mode (the hook reuses u and v) on clones of the updated u and v passed in as
        inputs, which the recomputation in the backward pass sees unchanged even if another
        forward pass has moved the buffers on since. Nothing else in these blocks depends on
        the training flag (their batch norms always use the stored statistics)."""
        net, gen = self.net, self.net.generator
        cond = torch.cat((z, net.embeddings(one_hot)), dim=1)
        x = gen.gen_z(cond)
        x = x.view(-1, 4, 4, 16 * gen.config.channel_width).permute(0, 3, 1, 2).contiguous()
        for block in gen.layers:
            norms = _spectral_norms(block)
            with torch.no_grad():
                for module, hook in norms.values():
                    hook.compute_weight(module, do_power_iteration=True)
            vectors = {f"{path}.{hook.name}_{end}": getattr(module, f"{hook.name}_{end}").clone()
                       for path, (module, hook) in norms.items() for end in ("u", "v")}
            x = checkpoint(_run_block, block, [m for m, _ in norms.values()], x, cond, self.truncation, vectors,
                           use_reentrant=False)
        x = gen.bn(x, self.truncation)
        x = gen.relu(x)
        x = gen.conv_to_rgb(x)
        return gen.tanh(x[:, :3, ...])


def _spectral_norms(block: nn.Module) -> dict[str, tuple[nn.Module, SpectralNorm]]:
    """The spectral-normalised modules in `block` by path, with their hooks."""
    return {path: (module, hook) for path, module in block.named_modules()
            for hook in module._forward_pre_hooks.values() if isinstance(hook, SpectralNorm)}


def _run_block(block: nn.Module, normed: list[nn.Module], x: torch.Tensor, cond: torch.Tensor, truncation: float,
               vectors: dict[str, torch.Tensor]) -> torch.Tensor:
    """Run one generator block with its spectral norms reading `vectors` (u and v, by buffer
    path) without advancing them. Checkpointed: the backward pass calls this again."""
    modes = [m.training for m in normed]
    try:
        for m in normed:
            m.training = False
        args = (x, cond, truncation) if isinstance(block, GenBlock) else (x,)
        return torch.func.functional_call(block, vectors, args)
    finally:
        for m, mode in zip(normed, modes):
            m.training = mode
