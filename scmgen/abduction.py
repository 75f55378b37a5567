"""Counterfactuals of observed images: abduction, action, prediction.

An SCM can only make counterfactuals of samples whose exogenous values it knows. For an observed
image those values must be inferred first (abduction): an `Encoder` trained for the graph on the
SCM's own samples predicts every noise node and the label nodes that feed mechanisms, and an
optional refinement optimises the noise (Adam) against L1 + LPIPS between the image and its
reconstruction. The inferred values then go through `SCM.counterfactual`, so an intervention
recomputes only its descendants and everything else stays bit for bit the reconstruction's.

The encoder trains on samples whose labels are drawn independently per label node, so it does
not learn the training data's correlation (a red background does not imply the digit 0).
"""
from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from scmgen.checkpoint import atomic_directory, load_module, read_json, save_module, write_json
from scmgen.errors import SpecError, UsageError
from scmgen.images import grid_image
from scmgen.interventions import DoValue
from scmgen.model import SCM, Values
from scmgen.precision import autocast
from scmgen.progress import progress_bar
from scmgen.provenance import run_metadata
from scmgen.spec import LabelNode, MechanismNode, NoiseNode

ENCODER_DIR = "encoder"
ENCODER_VERSION = 1  # bump when the architecture changes: older encoders are retrained


# -- what abduction infers ------------------------------------------------------------------
def abduction_targets(model: SCM) -> tuple[dict[str, int], dict[str, int]]:
    """Noise nodes (name -> size) and label nodes (name -> classes) the output depends on. The labels
    are those read by a mechanism (CGN: shape, texture, background; a cGAN: y), not their parent y."""
    up = model.upstream([model.spec.output])
    noise, labels = {}, {}
    for name in model.order:
        node = model.spec.nodes[name]
        if name not in up:
            continue
        if isinstance(node, NoiseNode):
            noise[name] = node.dim
        elif isinstance(node, LabelNode) and any(
                isinstance(model.spec.nodes[c], MechanismNode) and c in up for c in model.graph.successors(name)):
            labels[name] = node.classes
    return noise, labels


def output_shape(model: SCM) -> tuple[int, int, int]:
    """(C, H, W) of the graph's output image, from one sample."""
    with torch.no_grad():
        image = model.sample(1, seed=0, targets=[model.spec.output])[model.spec.output]
    c, h, w = image.shape[1:]
    return int(c), int(h), int(w)


def factual_values(model: SCM, noise: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor]) -> Values:
    """Every node the output depends on, for given noise and label values. A root label that was
    not inferred (CGN's y, which only its children read) gets its first inferred descendant's value."""
    given: dict[str, torch.Tensor] = {**noise, **labels}
    up = model.upstream([model.spec.output])
    n = next(iter(given.values())).shape[0]
    for name in model.exogenous:
        if name in given or name not in up:
            continue
        below = [k for k in labels if name in nx.ancestors(model.graph, k)]
        given[name] = labels[below[0]] if below else torch.zeros(n, dtype=torch.long, device=model.device)
    return model(given, targets=[model.spec.output])


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients while the block runs (gradients still reach inputs)."""
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    model.requires_grad_(False)
    model.eval()
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)


# -- the encoder ----------------------------------------------------------------------------
class Encoder(nn.Module):
    """A small conv net from an image to one vector per noise node and logits per label node. Its
    depth follows the image size: stride-2 stages down to about 4x4 (32 px: 3, 256 px: 6)."""

    def __init__(self, image_size: int, channels: int, noise: Mapping[str, int], labels: Mapping[str, int],
                 width: int = 32, hidden: int = 512) -> None:
        super().__init__()
        self.image_size, self.channels, self.width, self.hidden = image_size, channels, width, hidden
        self.noise_sizes, self.label_sizes = dict(noise), dict(labels)
        layers: list[nn.Module] = []
        cin = channels
        for i in range(max(1, round(math.log2(max(image_size, 8) / 4)))):
            cout = min(width * 2 ** i, 256)
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.2),
                       nn.Conv2d(cout, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            cin = cout
        self.trunk = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                                   nn.Linear(cin * 16, hidden), nn.LeakyReLU(0.2))
        self.noise_heads = nn.ModuleDict({k: nn.Linear(hidden, d) for k, d in self.noise_sizes.items()})
        self.label_heads = nn.ModuleDict({k: nn.Linear(hidden, c) for k, c in self.label_sizes.items()})
        self.meta: dict[str, Any] = {}

    def forward(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Predicted noise per noise node and label logits per label node, for images in [-1, 1]."""
        h = self.trunk(images)
        return ({k: head(h) for k, head in self.noise_heads.items()},
                {k: head(h) for k, head in self.label_heads.items()})

    def config(self) -> dict[str, Any]:
        return {"version": ENCODER_VERSION, "image_size": self.image_size, "channels": self.channels,
                "width": self.width, "hidden": self.hidden, "noise": self.noise_sizes, "labels": self.label_sizes}

    @classmethod
    def for_model(cls, model: SCM) -> Encoder:
        """An untrained encoder sized for `model`'s output image and exogenous nodes."""
        channels, size, _ = output_shape(model)
        noise, labels = abduction_targets(model)
        if not noise and not labels:
            raise UsageError(f"graph '{model.spec.name}': its output depends on no noise or label node to infer")
        return cls(size, channels, noise, labels)

    def fits(self, model: SCM) -> bool:
        noise, labels = abduction_targets(model)
        return (self.noise_sizes, self.label_sizes) == (noise, labels)

    def save_pretrained(self, directory: str | Path, extra_meta: dict[str, Any] | None = None) -> Path:
        """Write model.safetensors, config.json and meta.json into `directory`, atomically."""
        directory = Path(directory)
        with atomic_directory(directory) as tmp:
            save_module(self, tmp / "model.safetensors")
            write_json(tmp / "config.json", self.config())
            write_json(tmp / "meta.json", run_metadata(next(self.parameters()).device, **(extra_meta or {})))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> Encoder:
        directory = Path(directory)
        source = str(directory)
        config = read_json(directory / "config.json", source)
        try:
            if config["version"] != ENCODER_VERSION:
                raise SpecError(source, "config.json", f"encoder version {config['version']}, "
                                                       f"expected {ENCODER_VERSION}: retrain it")
            encoder = cls(config["image_size"], config["channels"], config["noise"], config["labels"],
                          config["width"], config["hidden"])
        except (KeyError, TypeError) as e:
            raise SpecError(source, "config.json", f"not an encoder config ({e})") from None
        load_module(encoder, directory / "model.safetensors", source)
        encoder.meta = read_json(directory / "meta.json", source)
        return encoder.to(device).eval()


def weights_digest(model: SCM) -> str:
    """A fingerprint of the SCM's weights: an encoder trained for other weights is not reused."""
    from scmgen.sampling import _weights_digest

    return _weights_digest(model)


def random_labels(model: SCM, labels: Mapping[str, int], n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Each label drawn uniformly and independently of the others."""
    return {k: torch.randint(c, (n,), generator=generator).to(model.device) for k, c in labels.items()}


@dataclass
class EncoderTraining:
    steps: int
    seconds: float
    label_accuracy: dict[str, float] = field(default_factory=dict)  # on fresh samples, after training
    noise_r2: dict[str, float] = field(default_factory=dict)
    reconstruction_l1: float = 0.0


def train_encoder(model: SCM, steps: int = 600, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                  reconstruction_weight: float = 1.0, precision: str = "auto",
                  progress: bool = True) -> tuple[Encoder, EncoderTraining]:
    """Train an encoder for `model` on its own samples (labels independent per node). Loss: noise
    regression (MSE) + label cross-entropy + L1 of the image regenerated from the predicted noise
    and the true labels through the frozen SCM, which teaches it the noise that matters to the image.
    `precision` bf16 runs the passes under autocast (about 2x faster on CPUs with bf16 units); auto
    picks it only where the device computes bf16 natively (emulated, it is many times slower)."""
    import time

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = Encoder.for_model(model).to(model.device)
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(encoder.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    out = model.spec.output
    start = time.perf_counter()
    encoder.train()
    with frozen(model), progress_bar(progress) as bar:
        task = bar.add_task("encoder", total=steps, status="")
        for step in range(steps):
            with autocast(model.device, precision):
                noise, labels, images = _training_batch(model, encoder, batch_size, generator)
                pred_noise, logits = encoder(images.float())
                loss_noise = sum(F.mse_loss(pred_noise[k].float(), noise[k]) for k in noise) / max(1, len(noise))
                loss_label = sum(F.cross_entropy(logits[k].float(), labels[k]) for k in labels)
                loss = loss_noise + loss_label
                if reconstruction_weight and noise:
                    regenerated = factual_values(model, pred_noise, labels)[out]
                    loss = loss + reconstruction_weight * F.l1_loss(regenerated.float(), images.float())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            bar.advance(task)
            if step % 50 == 0 or step == steps - 1:
                bar.update(task, status=f"noise={loss_noise.item():.3f} labels={loss_label.item():.3f}")
    encoder.eval()
    stats = encoder_quality(model, encoder, torch.Generator().manual_seed(seed + 1))
    stats.steps, stats.seconds = steps, time.perf_counter() - start
    return encoder, stats


def _training_batch(model: SCM, encoder: Encoder, n: int, generator: torch.Generator
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    with torch.no_grad():
        exo = model.sample_exogenous(n, generator)
        noise = {k: exo[k] for k in encoder.noise_sizes}
        labels = random_labels(model, encoder.label_sizes, n, generator)
        images = factual_values(model, noise, labels)[model.spec.output]
    return noise, labels, images


@torch.no_grad()
def encoder_quality(model: SCM, encoder: Encoder, generator: torch.Generator, n: int = 512) -> EncoderTraining:
    """Label accuracy, noise R^2 and reconstruction L1 (encoder only) on fresh samples of `model`."""
    with frozen(model):
        noise, labels, images = _training_batch(model, encoder, n, generator)
        pred_noise, logits = encoder(images)
        recon = factual_values(model, pred_noise, labels)[model.spec.output]
    accuracy = {k: float((logits[k].argmax(1) == labels[k]).float().mean()) for k in labels}
    r2 = {k: float(1 - ((pred_noise[k] - noise[k]) ** 2).mean() / noise[k].var().clamp_min(1e-8)) for k in noise}
    return EncoderTraining(0, 0.0, accuracy, r2, float((recon - images).abs().mean()))


def encoder_directory(checkpoint: Path) -> Path:
    """Where the encoder of a model directory lives: beside its weights."""
    return Path(checkpoint) / ENCODER_DIR


def load_or_train_encoder(model: SCM, directory: Path | None, steps: int = 600, retrain: bool = False,
                          progress: bool = True, say: Callable[[str], None] = print) -> Encoder:
    """The encoder saved in `directory` if it was trained for these weights, else a newly trained
    one (saved there when `directory` is given). `say` reports what happened."""
    digest = weights_digest(model)
    if directory is not None and (directory / "config.json").exists() and not retrain:
        try:
            encoder = Encoder.from_pretrained(directory, model.device)
        except SpecError as e:  # an older version or a damaged file: a new one is the fix
            say(f"{e}: retraining it")
        else:
            if encoder.meta.get("scm_weights") == digest and encoder.fits(model):
                return encoder
            say(f"the encoder in {directory} was trained for other weights or another graph: retraining it")
    where = f" (saved to {directory})" if directory is not None else ""
    say(f"training the abduction encoder for '{model.spec.name}': {steps} steps on its own samples{where}")
    encoder, stats = train_encoder(model, steps=steps, progress=progress)
    meta = {"scm_weights": digest, "graph": model.spec.name, "training": stats.__dict__}
    encoder.meta = meta
    say(f"encoder: label accuracy {_pct(stats.label_accuracy)} on fresh samples, reconstruction L1 "
        f"{stats.reconstruction_l1:.3f}, {stats.seconds:.0f} s")
    if directory is not None:
        encoder.save_pretrained(directory, meta)
    return encoder


def _pct(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {100 * v:.1f}%" for k, v in values.items()) or "-"


# -- distances ------------------------------------------------------------------------------
class ImageDistance(nn.Module):
    """Per-image L1 (mean |a - b| on the [-1, 1] scale) and LPIPS (VGG). LPIPS uses ImageNet VGG16
    weights when they are cached (`scmgen weights fetch vgg16`), else a random backbone, and then
    `random_backbone` is True and every report says so."""

    def __init__(self) -> None:
        super().__init__()
        from mechanisms.perceptual import LPIPS
        from scmgen.plugins import NodeInfo
        from scmgen.weights import used_random_init

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.lpips = LPIPS({"input": NodeInfo("input", "data"), "target": NodeInfo("target", "data")}, net="vgg")
        self.random_backbone = "vgg16" in used_random_init()

    @property
    def lpips_note(self) -> str:
        return "LPIPS with a RANDOM VGG16 backbone (ImageNet weights not cached)" if self.random_backbone \
            else "LPIPS (VGG16, ImageNet weights)"

    @staticmethod
    def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a.float() - b.float()).abs().flatten(1).mean(1)

    def perceptual(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.lpips.model(a.float(), b.float()).flatten()


# -- abduction ------------------------------------------------------------------------------
@dataclass
class Abduction:
    """What abduction inferred for a batch of observed images, and how well it reconstructs them."""

    noise: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]
    values: Values  # every node the output depends on: the factual world of the images
    reconstruction: torch.Tensor
    l1: torch.Tensor  # per image, after refinement
    lpips: torch.Tensor
    l1_encoder: torch.Tensor  # per image, encoder only
    lpips_encoder: torch.Tensor
    steps: int

    def __len__(self) -> int:
        return self.reconstruction.shape[0]

    def subset(self, index: slice | torch.Tensor) -> Abduction:
        """The abduction of some of the images (all its tensors are per image)."""
        def pick(d: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v[index] for k, v in d.items()}
        return Abduction(pick(self.noise), pick(self.labels), pick(self.values), self.reconstruction[index],
                         self.l1[index], self.lpips[index], self.l1_encoder[index], self.lpips_encoder[index], self.steps)

    def summary(self) -> dict[str, float]:
        return {"l1": float(self.l1.mean()), "lpips": float(self.lpips.mean()),
                "l1_encoder": float(self.l1_encoder.mean()), "lpips_encoder": float(self.lpips_encoder.mean())}


def abduct(model: SCM, encoder: Encoder, images: torch.Tensor, steps: int = 0, *,
           distance: ImageDistance | None = None, lr: float = 0.2, perceptual_weight: float = 1.0,
           prior_weight: float = 1e-3, top_k: int = 1, batch_size: int = 256, precision: str = "auto") -> Abduction:
    """Infer noise and labels of `images` (N, C, H, W in [-1, 1]): the encoder's prediction, the
    labels as its argmax (or, with `top_k` > 1, per label node the one of its top k classes that
    reconstructs best), then `steps` Adam steps on the noise against L1 + perceptual_weight *
    LPIPS + prior_weight * |u|^2 / dim. Each image keeps its best noise seen, so refinement never
    makes its objective worse. Works in batches of `batch_size`; `precision` bf16 (auto: where the
    device computes it natively) runs the optimisation under autocast, while the reported
    reconstruction and errors are fp32."""
    distance = distance or ImageDistance().to(model.device)
    parts = [_abduct_batch(model, encoder, images[i:i + batch_size].to(model.device), steps, distance, lr,
                           perceptual_weight, prior_weight, top_k, precision)
             for i in range(0, images.shape[0], batch_size)]
    if len(parts) == 1:
        return parts[0]

    def cat(get: Callable[[Abduction], Any]) -> Any:
        first = get(parts[0])
        if isinstance(first, dict):
            return {k: torch.cat([get(p)[k] for p in parts]) for k in first}
        return torch.cat([get(p) for p in parts])

    return Abduction(cat(lambda a: a.noise), cat(lambda a: a.labels), cat(lambda a: a.values),
                     cat(lambda a: a.reconstruction), cat(lambda a: a.l1), cat(lambda a: a.lpips),
                     cat(lambda a: a.l1_encoder), cat(lambda a: a.lpips_encoder), steps)


def _abduct_batch(model: SCM, encoder: Encoder, images: torch.Tensor, steps: int, distance: ImageDistance,
                  lr: float, perceptual_weight: float, prior_weight: float, top_k: int, precision: str) -> Abduction:
    out = model.spec.output
    uniform = {k for k in encoder.noise_sizes if model.spec.nodes[k].distribution == "uniform"}

    def objective(noise: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with autocast(model.device, precision):
            recon = factual_values(model, noise, labels)[out]
            loss = distance.l1(recon, images)
            if perceptual_weight:
                loss = loss + perceptual_weight * distance.perceptual(recon, images).float()
        if prior_weight:
            loss = loss + prior_weight * sum(((v ** 2).mean(1) for k, v in noise.items() if k not in uniform),
                                             torch.zeros_like(loss))
        return loss

    with frozen(model):
        with torch.no_grad():
            noise, logits = encoder(images)
            noise = {k: v.clamp(-1, 1) if k in uniform else v for k, v in noise.items()}
            labels = {k: v.argmax(1) for k, v in logits.items()}
            if top_k > 1:
                labels = _best_labels(logits, labels, noise, top_k, objective)
            start = factual_values(model, noise, labels)[out]
            l1_encoder, lpips_encoder = distance.l1(start, images), distance.perceptual(start, images)
        if steps > 0:
            noise = _refine(noise, labels, steps, lr, objective, uniform)
        with torch.no_grad():
            values = factual_values(model, noise, labels)
            recon = values[out]
            l1, lp = distance.l1(recon, images), distance.perceptual(recon, images)
    return Abduction(noise, labels, values, recon, l1, lp, l1_encoder, lpips_encoder, steps)


def _best_labels(logits: Mapping[str, torch.Tensor], labels: dict[str, torch.Tensor],
                 noise: Mapping[str, torch.Tensor], top_k: int,
                 objective: Callable[..., torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per label node in turn, per image: the one of its top-k classes with the lowest objective."""
    labels = dict(labels)
    for k, v in logits.items():
        candidates = v.topk(min(top_k, v.shape[1]), dim=1).indices  # (N, k)
        scores = torch.stack([objective(noise, {**labels, k: candidates[:, j]}) for j in range(candidates.shape[1])], 1)
        labels[k] = candidates.gather(1, scores.argmin(1, keepdim=True)).squeeze(1)
    return labels


def _refine(noise: Mapping[str, torch.Tensor], labels: Mapping[str, torch.Tensor], steps: int, lr: float,
            objective: Callable[..., torch.Tensor], uniform: set[str]) -> dict[str, torch.Tensor]:
    params = {k: v.detach().clone().requires_grad_(True) for k, v in noise.items()}
    opt = torch.optim.Adam(list(params.values()), lr=lr)
    best = {k: v.detach().clone() for k, v in noise.items()}
    best_loss: torch.Tensor | None = None
    for step in range(steps + 1):  # the last pass only scores the final step
        loss = objective(params, labels)
        with torch.no_grad():
            better = torch.ones_like(loss, dtype=torch.bool) if best_loss is None else loss < best_loss
            best_loss = loss.detach() if best_loss is None else torch.where(better, loss.detach(), best_loss)
            for k, kept in best.items():
                kept[better] = params[k][better]
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        with torch.no_grad():
            for k in uniform:
                params[k].clamp_(-1, 1)
    return best


# -- action and prediction ------------------------------------------------------------------
@torch.no_grad()
def counterfactual_of(model: SCM, abduction: Abduction, do: Mapping[str, DoValue]) -> Values:
    """The abducted images under `do`: only the intervened nodes' descendants are recomputed."""
    with frozen(model):
        return model.counterfactual(abduction.values, do)


def counterfactuals(model: SCM, encoder: Encoder, images: torch.Tensor, interventions: list[Mapping[str, DoValue]],
                    steps: int = 0, **abduct_options: Any) -> tuple[Abduction, list[torch.Tensor]]:
    """Abduct `images` once, then one counterfactual image batch per intervention."""
    found = abduct(model, encoder, images, steps, **abduct_options)
    return found, [counterfactual_of(model, found, do)[model.spec.output] for do in interventions]


def describe(model: SCM, do: Mapping[str, DoValue]) -> str:
    """'shape=3, background=7' with class names where the graph has them ('shape=disk')."""
    parts = []
    for node, value in do.items():
        node_spec = model.spec.nodes[node]
        if isinstance(value, int) and isinstance(node_spec, LabelNode) and node_spec.names:
            value = node_spec.names[value]
        parts.append(f"{node}={value}")
    return ", ".join(parts)


def counterfactual_panel(model: SCM, real: torch.Tensor, found: Abduction, interventions: list[Mapping[str, DoValue]],
                         title: str = "") -> Image.Image:
    """Columns: the images; rows: real, reconstruction, then one counterfactual row per intervention."""
    rows = [real.cpu(), found.reconstruction.cpu()]
    rows += [counterfactual_of(model, found, do)[model.spec.output].cpu() for do in interventions]
    labels = ["real", "recon", *(describe(model, do) for do in interventions)]
    how = "encoder only" if not found.steps else f"encoder + {found.steps} steps"
    title = title or f"{model.spec.name}: real, reconstruction ({how}), counterfactuals"
    return grid_image(torch.cat(rows), real.shape[0], labels, title=title)
