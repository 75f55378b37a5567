"""Anti-causal predictors: one small classifier per generative factor (digit shape; object colour
or texture; background colour or texture), trained on real images to read that factor back off an
image.

They train on the graph's data set rebuilt with correlation 0, so each has to read its own factor
and cannot lean on another one that agrees with it in the biased training set. Each is an
`mnist.cnn` (separate networks: with one shared backbone the easy colour heads slowed the shape
head to 57% after two epochs, against 82% alone); their 64 features each, concatenated, are the
feature space of the Frechet distance. Trained once per data set and cached under
$SCMGEN_CACHE/predictors (default ~/.cache/scmgen/predictors), one folder per factor.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scmgen.checkpoint import atomic_directory, read_json, write_json
from scmgen.classifier import InvariantClassifier
from scmgen.classify import TensorImages, train_classifier
from scmgen.data import ImageSet, load_dataset, to_float
from scmgen.errors import SpecError
from scmgen.spec import GraphSpec

PREDICTOR_VERSION = 2  # part of the cache key: bump when the recipe changes


def cache_root() -> Path:
    return Path(os.environ.get("SCMGEN_CACHE") or Path.home() / ".cache" / "scmgen") / "predictors"


def dataset_key(spec: GraphSpec) -> str:
    """The data set's plugin and parameters (its correlation aside): graphs on the same data share predictors."""
    if spec.data is None:
        raise SpecError(spec.name, "data", "evaluation needs real images with known factors: the graph has no data section")
    params = {k: v for k, v in spec.data.params.items() if k != "correlation"}
    text = json.dumps({"plugin": spec.data.plugin, "params": params, "version": PREDICTOR_VERSION}, sort_keys=True)
    return f"{spec.data.plugin}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def real_data(spec: GraphSpec, source: str, split: str) -> ImageSet:
    """The graph's data set with every factor drawn independently of the label (train: correlation
    0; the MNIST test splits are always so). It must name its factors."""
    data = load_dataset(spec, source, split, correlation=0.0)
    if not data.factors:
        raise SpecError(source, "data.plugin", f"'{spec.data.plugin}' names no factors to evaluate against")  # type: ignore[union-attr]
    return data


@dataclass
class Predictors:
    """The trained predictors (one per factor), where they are cached, and their accuracy on real test images."""

    models: dict[str, InvariantClassifier]
    directory: Path
    test_accuracy: dict[str, float]
    trained_now: bool

    @property
    def factors(self) -> list[str]:
        return list(self.models)

    @torch.no_grad()
    def read_out(self, images: torch.Tensor, batch_size: int = 512) -> dict[str, torch.Tensor]:
        """The predicted class of every factor, per image (images float in [-1, 1] or uint8)."""
        out: dict[str, list[torch.Tensor]] = {f: [] for f in self.models}
        for i in range(0, len(images), batch_size):
            x = _float(images[i:i + batch_size]).to(self.device)
            for f, m in self.models.items():
                out[f].append(m(x)[f].argmax(1).cpu())
        return {f: torch.cat(v) for f, v in out.items()}

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Every predictor's 64 backbone features per image, concatenated: the Frechet distance's space."""
        parts = []
        for i in range(0, len(images), batch_size):
            x = _float(images[i:i + batch_size]).to(self.device)
            parts.append(torch.cat([m.backbone(x * m.input_scale + m.input_shift).float().cpu()
                                    for m in self.models.values()], 1))
        return torch.cat(parts)

    @property
    def feature_space(self) -> str:
        return f"{len(self.models)} mnist.cnn predictors' backbones ({64 * len(self.models)} features)"

    @property
    def device(self) -> torch.device:
        return next(next(iter(self.models.values())).parameters()).device


def _float(images: torch.Tensor) -> torch.Tensor:
    return to_float(images) if images.dtype == torch.uint8 else images.float()


def accuracy(predictors: Predictors, data: ImageSet) -> dict[str, float]:
    read = predictors.read_out(data.images)
    return {f: float((read[f] == data.factors[f]).float().mean()) for f in predictors.factors if f in data.factors}


def load_or_train_predictors(spec: GraphSpec, source: str, epochs: int = 2, device: str | torch.device = "cpu",
                             progress: bool = True, say: Callable[[str], None] = print,
                             root: Path | None = None) -> Predictors:
    """The cached predictors of the graph's data set, or new ones trained on its real training
    images with the factors decorrelated (`epochs` passes of the MNIST recipe each) and cached."""
    directory = (root or cache_root()) / dataset_key(spec)
    if (directory / "factors.json").exists():
        factors = read_json(directory / "factors.json", str(directory))
        models = {f: InvariantClassifier.from_pretrained(directory / f, device) for f in factors["factors"]}
        return Predictors(models, directory, dict(factors.get("test_accuracy", {})), False)
    train = real_data(spec, source, "train")
    test = real_data(spec, source, "test")
    classes = {f: int(max(int(t.max()) + 1, len(train.class_names or []))) for f, t in train.factors.items()}
    say(f"training anti-causal predictors for {', '.join(classes)} on {len(train)} real images of "
        f"'{spec.data.plugin}' with the factors decorrelated; cached in {directory}")  # type: ignore[union-attr]
    models = {}
    for factor, width in classes.items():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = InvariantClassifier("mnist.cnn", {factor: width}, target_head=factor)
            train_classifier(model, counterfactuals=TensorImages(train.images, {factor: train.factors[factor]}),
                             real_fraction=0.0, recipe="mnist", epochs=epochs, seed=0, device=str(device),
                             progress=progress)
        models[factor] = model.eval()
    predictors = Predictors(models, directory, {}, True)
    predictors.test_accuracy = accuracy(predictors, test)
    say("predictor accuracy on real test images: " +
        ", ".join(f"{f} {100 * a:.1f}%" for f, a in predictors.test_accuracy.items()))
    meta: dict[str, Any] = {"dataset": spec.data.plugin, "params": spec.data.params,  # type: ignore[union-attr]
                            "epochs": epochs, "train_images": len(train)}
    with atomic_directory(directory) as tmp:
        for factor, model in models.items():
            model.save_pretrained(tmp / factor, {**meta, "test_accuracy": predictors.test_accuracy[factor]})
        write_json(tmp / "factors.json", {"factors": list(models), "test_accuracy": predictors.test_accuracy, **meta})
    return predictors
