"""The bench's ceiling classifier for the benchmark scripts that read counterfactuals with it: the
reference CNN trained, on Table 1's schedule, on the real training digits with colours / textures
drawn at random, so it never saw a generated image nor the training set's correlation."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from scmgen.classifier import InvariantClassifier
from scmgen.classify import train_classifier
from scmgen.data import ImageSet, load_dataset
from scmgen.model import SCM
from scmgen.table1 import DATASETS, Settings, graph_spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--dataset, --seed, --limit: what every ceiling-based script takes."""
    parser.add_argument("--dataset", choices=list(DATASETS), default="double_colored")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N real images (smoke runs)")


def load_cgn(parser: argparse.ArgumentParser, model: str | Path, dataset: str) -> SCM:
    """A trained CGN's model folder, or a usage error if it was trained on another data set."""
    cgn = SCM.from_pretrained(model, "cpu").eval()
    trained_on, plugin = cgn.spec.data and cgn.spec.data.plugin, graph_spec(dataset)[1].data.plugin
    if trained_on != plugin:
        parser.error(f"{model}: a CGN of {trained_on}, not of --dataset {dataset} ({plugin})")
    return cgn


def real_sets(dataset: str, limit: int | None = None) -> tuple[ImageSet, ImageSet]:
    """(training digits with random colours / textures, the test set)."""
    from mechanisms.mnist.datasets import DATASETS as BUILDERS
    from mechanisms.mnist.datasets import environments

    path, spec = graph_spec(dataset)
    test = load_dataset(spec, str(path), "test")
    params = {k: v for k, v in spec.data.params.items() if k != "correlation"}
    real = environments(BUILDERS[spec.data.plugin], [0.0], **params)[0]
    if limit:
        real, test = real.subset(torch.arange(limit)), test.subset(torch.arange(min(limit, len(test))))
    return real, test


def train_ceiling(real: ImageSet, seed: int, epochs: int = Settings.epochs, lr: float = Settings.lr
                  ) -> InvariantClassifier:
    torch.manual_seed(seed)
    model = InvariantClassifier("mnist.cnn", {"shape": 10})
    train_classifier(model, environments=[real], recipe="mnist", epochs=epochs, lr=lr,
                     batch_size=Settings.batch_size, seed=seed, device="cpu", precision=Settings.precision, progress=False)
    return model
