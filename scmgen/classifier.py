"""The invariant classifier of CGN: one backbone and one linear head per intervenable label of the
graph (for CGN: shape, texture, background), each head as wide as its label has classes.

Training (`scmgen.classify`): on a counterfactual image each head learns its own mechanism's
label, so the shape head gets no reward for reading texture or background; on a real image, where
all labels are the one class label, the heads' logits are averaged and that average is trained
on the real label (the reference's `avg_preds`). At test time the average is the prediction on
real images (again as in the reference), and `target_head` (default: shape) is reported as the
classifier's answer to the main task under cue conflicts and swapped backgrounds, because it is
the head that was taught to ignore the other mechanisms. Averaging needs equally wide heads.

Inputs are images in [-1, 1] (scmgen's convention); ResNet backbones convert them to the
ImageNet normalisation their pretrained weights expect.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import load_file
from torch import nn

from scmgen import weights
from scmgen.checkpoint import atomic_directory, load_module, read_json, safe_torch_load, save_module, write_json
from scmgen.errors import ScmgenError, SpecError, UsageError
from scmgen.provenance import run_metadata
from scmgen.spec import GraphSpec, LabelNode, parse_spec, read_yaml

FEATURES = {"mnist.cnn": 64, "resnet18": 512, "resnet50": 2048}
BACKBONES = tuple(FEATURES)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AVERAGE = "average"


def heads_from_spec(spec: GraphSpec) -> dict[str, int]:
    """One head per intervenable label node, in the graph's order, sized by its classes."""
    return {n: spec.nodes[n].classes for n in spec.intervenable if isinstance(spec.nodes[n], LabelNode)}


def heads_from_columns(columns: Sequence[str], classes: int) -> dict[str, int]:
    """Heads named by a counterfactual set's label columns (meta.json `columns`), `classes` wide."""
    return {c: classes for c in columns}


def heads_from_checkpoint(path: str | Path) -> dict[str, int]:
    """Heads of the SCM in a graph YAML file, a model directory or a training run directory. Only
    the spec is read: no mechanism is built and no weights are needed."""
    p = Path(path)
    if p.is_file():
        graph = p
    else:
        from scmgen.cli import resolve_checkpoint

        graph = resolve_checkpoint(str(p)) / "graph.yaml"
    heads = heads_from_spec(parse_spec(read_yaml(graph), str(graph)))
    if not heads:
        raise SpecError(str(graph), "intervenable", "no intervenable label node to make a classifier head from")
    return heads


class ReferenceCNN(nn.Sequential):
    """The reference MNIST classifier's feature extractor (64 features per image), its layers and
    state-dict keys as `nn.Sequential` lays them out.

    `forward` folds the input batch norm into the first convolution, which is exact:
    conv(scale * x + shift) with zero padding is conv with the weights times `scale`, plus the
    convolution of the constant `shift` image (computed once, for one image). Unfolded, the
    normalised input needs a gradient (for the norm's two affine parameters per channel), so the
    first convolution's backward also computes a 3-channel input gradient at full resolution; folded,
    the images need none: 1.17x the training images/s in fp32 on one thread of an AMD EPYC
    (`benchmarks/mnist_classifier_step.py`, benchmarks/RESULTS.md)."""

    def __init__(self) -> None:
        super().__init__(
            nn.BatchNorm2d(3),
            nn.Conv2d(3, 32, 5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )

    def input_affine(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The input batch norm as a per-channel `scale * x + shift`, with the statistics it would
        use: the batch's in training (updating the running ones as `nn.BatchNorm2d` does), else
        the running ones."""
        norm = self[0]
        if norm.training:
            var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=0)
            with torch.no_grad():
                n = x.numel() // x.shape[1]
                norm.num_batches_tracked += 1
                norm.running_mean.lerp_(mean, norm.momentum)
                norm.running_var.lerp_(var * n / max(n - 1, 1), norm.momentum)  # unbiased, as BatchNorm2d
        else:
            mean, var = norm.running_mean, norm.running_var
        scale = torch.rsqrt(var + norm.eps) * norm.weight
        return scale, norm.bias - mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self[1]
        scale, shift = self.input_affine(x)
        y = F.conv2d(x, conv.weight * scale.view(1, -1, 1, 1), conv.bias, conv.stride, conv.padding)
        constant = shift.view(1, -1, 1, 1).expand(1, -1, *x.shape[2:])
        y = y + F.conv2d(constant, conv.weight, None, conv.stride, conv.padding)
        for layer in list(self)[2:]:
            y = layer(y)
        return y


def resnet(name: str) -> nn.Module:
    """A torchvision ResNet without its classifier: `fc` is the identity, so the state-dict keys
    are exactly torchvision's minus `fc.*`."""
    model = getattr(torchvision.models, name)(weights=None)
    model.fc = nn.Identity()
    return model


def freeze_batchnorm(module: nn.Module) -> None:
    """Keep batch-norm statistics fixed while the rest trains (the reference fine-tunes its
    pretrained ResNet-50 this way)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def average_logits(outputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The prediction on real images: the mean of the heads' logits."""
    return torch.stack([outputs[k] for k in outputs if k != AVERAGE]).mean(0)


def real_loss(outputs: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the averaged logits against the real class label."""
    return F.cross_entropy(average_logits(outputs).float(), labels)


def counterfactual_loss(outputs: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Sum over heads of each head's cross-entropy against its own mechanism's label."""
    losses = [F.cross_entropy(outputs[h].float(), labels[h]) for h in outputs if h != AVERAGE]
    return torch.stack(losses).sum()


class InvariantClassifier(nn.Module):
    """A backbone with one linear head per label; see the module docstring."""

    def __init__(self, backbone: str, heads: Mapping[str, int], target_head: str = "shape") -> None:
        super().__init__()
        if backbone not in FEATURES:
            raise UsageError(f"unknown backbone '{backbone}', expected one of {', '.join(BACKBONES)}")
        if not heads:
            raise UsageError("the classifier needs at least one head")
        if target_head not in heads:
            raise UsageError(f"target head '{target_head}' is not among the heads {', '.join(heads)}")
        if len(set(heads.values())) != 1:
            raise UsageError(f"heads {dict(heads)} differ in size; averaging their logits on real images needs "
                             "equal sizes")
        self.backbone_name, self.target_head = backbone, target_head
        self.backbone = ReferenceCNN() if backbone == "mnist.cnn" else resnet(backbone)
        self.heads = nn.ModuleDict({name: nn.Linear(FEATURES[backbone], n) for name, n in heads.items()})
        normalise = backbone != "mnist.cnn"  # the MNIST network normalises with its input batch norm
        std, mean = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.register_buffer("input_scale", 0.5 / std if normalise else torch.ones(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", (0.5 - mean) / std if normalise else torch.zeros(1, 3, 1, 1),
                             persistent=False)
        self.pretrained = False  # ImageNet weights were loaded into the backbone
        self.random_init: list[str] = []  # weights replaced by random ones under --random-init

    @property
    def head_sizes(self) -> dict[str, int]:
        return {name: head.out_features for name, head in self.heads.items()}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every head for images in [-1, 1]."""
        features = self.backbone(images * self.input_scale + self.input_shift)
        return {name: head(features) for name, head in self.heads.items()}

    def config(self) -> dict[str, Any]:
        return {"backbone": self.backbone_name, "heads": self.head_sizes, "target_head": self.target_head}

    # -- pretrained backbone ------------------------------------------------------------------
    def load_imagenet_weights(self) -> bool:
        """Load torchvision's ImageNet state dict (weights cache entry named like the backbone)
        strictly into the backbone, its `fc` left out; False when --random-init replaced it."""
        if self.backbone_name == "mnist.cnn":
            raise UsageError("the mnist.cnn backbone has no pretrained weights")
        folder = weights.require(self.backbone_name)
        if folder is None:
            self.random_init = [self.backbone_name]
            return False
        path = _weights_file(folder, self.backbone_name)
        state = load_file(str(path)) if path.suffix == ".safetensors" else safe_torch_load(path, str(folder))
        if not isinstance(state, dict):
            raise SpecError(str(path), "", "expected a state dict (a mapping of parameter names to tensors)")
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        own = self.backbone.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            what = f"missing keys {missing[:3]}" if missing else f"unexpected keys {unexpected[:3]}"
            raise SpecError(str(path), "", f"not a torchvision {self.backbone_name} state dict: {what}")
        bad = [k for k in own if own[k].shape != state[k].shape]
        if bad:
            raise SpecError(str(path), bad[0],
                            f"shape {tuple(state[bad[0]].shape)}, expected {tuple(own[bad[0]].shape)}")
        self.backbone.load_state_dict(state, strict=True)
        self.pretrained = True
        return True

    # -- persistence --------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, extra_meta: dict[str, Any] | None = None) -> Path:
        """Write model.safetensors, config.json and meta.json into `directory`, atomically."""
        directory = Path(directory)
        device = next(self.parameters()).device
        with atomic_directory(directory) as tmp:
            save_module(self, tmp / "model.safetensors")
            write_json(tmp / "config.json", self.config())
            write_json(tmp / "meta.json", run_metadata(device, pretrained=self.pretrained,
                                                       random_init=self.random_init, **(extra_meta or {})))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "InvariantClassifier":
        """Rebuild the classifier saved in `directory` and load its weights strictly."""
        directory = Path(directory)
        source = str(directory)
        if not directory.is_dir():
            raise SpecError(source, "", "no such classifier directory; expected model.safetensors + config.json")
        config = read_json(directory / "config.json", source)
        try:
            model = cls(config["backbone"], dict(config["heads"]), config["target_head"])
        except (KeyError, TypeError) as e:
            raise SpecError(source, "config.json", f"expected backbone, heads and target_head ({e})") from None
        load_module(model, directory / "model.safetensors", source)
        model.meta = read_json(directory / "meta.json", source)
        return model.to(device).eval()


def _weights_file(folder: Path, name: str) -> Path:
    """The state-dict file of weights entry `name`: the registered file, or the only one there."""
    entry = weights.ENTRIES.get(name)
    if entry is not None:
        return folder / next(iter(entry.files))
    found = sorted(p for p in folder.iterdir() if p.suffix in (".pth", ".pt", ".safetensors"))
    if len(found) != 1:
        raise ScmgenError(f"{folder}: expected exactly one .pth/.pt/.safetensors state dict for '{name}', "
                          f"found {len(found)}")
    return found[0]
