"""Why adding the real training images to the counterfactuals can lower test accuracy (Wildlife
MNIST in Table 1): which cue each way of mixing them teaches the classifier to follow.

    python benchmarks/real_half_shortcut.py results/table1/cache/wildlife/seed0/counterfactuals-*
    # ~7 min on 2 cores

COUNTERFACTUALS is a counterfactual set of the data set's CGN (the bench caches one per seed).
Every variant trains the reference CNN on Table 1's schedule:
- counterfactuals only (the reference code's classifier);
- real half: half of each batch real training images, the shape head alone (Table 1's Original +
  CGN row until the bench switched to three heads);
- three heads: the same batches with a head per intervened label of the CGN (shape, texture,
  background), real images trained through their averaged logits (the paper's invariant
  classifier, Table 1's Original + CGN row);
- domain-adversarial: real and counterfactual batches as two environments, with a head that tells
  real from generated trained through gradient reversal (LNTL on the source) at --adversary.
`--real-fraction` sets the share of real images in the mixed variants' batches (an epoch is one
pass over the real images, so a smaller share also means more steps).
Per variant: accuracy on the biased training set, on a validation set that is not the test set
(the same training digits with colours / textures drawn at random, i.e. the ceiling row's training
data: the set to choose a variant on), and on the test set, and the share of test images classified
as their texture's / background's class where that is not their digit's.
Appends a section to benchmarks/RESULTS.md (--out, or - for none).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import publish  # noqa: E402
from scmgen.classifier import InvariantClassifier, heads_from_spec  # noqa: E402
from scmgen.classify import TensorImages, accuracy, counterfactual_set, predictions, train_classifier  # noqa: E402  # noqa: E402
from scmgen.data import ImageSet, load_dataset  # noqa: E402
from scmgen.objectives import make_objective  # noqa: E402
from scmgen.provenance import run_metadata  # noqa: E402
from scmgen.table1 import DATASETS, Settings, cue_followed, graph_spec  # noqa: E402

VARIANTS = ("counterfactuals only", "real half", "three heads", "domain-adversarial")


def _tagged(images: torch.Tensor, labels: torch.Tensor, source: int) -> ImageSet:
    return ImageSet(images, labels, {"source": torch.full((len(labels),), source, dtype=torch.long)})


def train_variant(name: str, real: ImageSet, cf: TensorImages, args: argparse.Namespace) -> InvariantClassifier:
    """One classifier of VARIANTS, trained in place of Table 1's Original + CGN row."""
    torch.manual_seed(args.seed)
    kw: dict[str, Any] = dict(recipe="mnist", epochs=args.epochs, lr=args.lr, seed=args.seed, device="cpu",
                              precision=Settings.precision, progress=False)
    heads = heads_from_spec(graph_spec(args.dataset)[1]) if name == "three heads" else {"shape": 10}
    model = InvariantClassifier("mnist.cnn", heads)
    if name == "domain-adversarial":  # half a batch from each environment, as the real half has
        environments = [_tagged(real.images, real.labels, 0), _tagged(cf.images, cf.labels["shape"], 1)]
        objective = make_objective("lntl", weight=args.adversary, factors={"source": 2})
        train_classifier(model, environments=environments, objective=objective,
                         batch_size=Settings.batch_size // 2, **kw)
    else:
        fraction = 0.0 if name == "counterfactuals only" else args.real_fraction
        train_classifier(model, real if fraction else None, cf, real_fraction=fraction,
                         batch_size=Settings.batch_size, **kw)
    return model


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("counterfactuals", help="a counterfactual set of the data set's CGN")
    parser.add_argument("--dataset", choices=list(DATASETS), default="wildlife")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS))
    parser.add_argument("--adversary", type=float, default=0.1,
                        help="gradient-reversal strength of the real-vs-generated head (0.3 and 1.0 diverged)")
    parser.add_argument("--real-fraction", type=float, default=0.5, help="real share of the mixed variants' batches")
    parser.add_argument("--epochs", type=int, default=Settings.epochs)
    parser.add_argument("--lr", type=float, default=Settings.lr)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images of each set (smoke)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    if unknown := [v for v in variants if v not in VARIANTS]:
        parser.error(f"--variants: unknown {', '.join(unknown)}; expected some of {', '.join(VARIANTS)}")
    start = time.perf_counter()
    path, spec = graph_spec(args.dataset)
    real, test = load_dataset(spec, str(path), "train"), load_dataset(spec, str(path), "test")
    validation = load_dataset(spec, str(path), "train", correlation=0.0)
    cf = counterfactual_set(args.counterfactuals)
    if args.limit:
        real, validation = real.subset(torch.arange(args.limit)), validation.subset(torch.arange(args.limit))
        test = test.subset(torch.arange(min(args.limit, len(test))))
        cf = TensorImages(cf.images[:args.limit], {k: v[:args.limit] for k, v in cf.labels.items()})
    results: dict[str, dict[str, Any]] = {}
    for name in variants:
        model = train_variant(name, real, cf, args)
        on_test = predictions(model, test.images)
        results[name] = {"train_accuracy": accuracy(model, real), "validation_accuracy": accuracy(model, validation),
                         "test_accuracy": float((on_test == test.labels).float().mean()),
                         "follows": cue_followed(on_test, test)}
    meta = run_metadata("cpu", seed=args.seed, wall_seconds=round(time.perf_counter() - start, 1))
    factors = list(next(iter(results.values()))["follows"])
    publish("\n".join([
        f"\n## {DATASETS[args.dataset].title}: which cue real + counterfactual classifiers follow, {meta['time'][:10]}\n",
        f"- commit {meta['commit']}, torch {meta['torch']}, {meta['cpu']}, {meta['machine']}, device cpu, "
        f"seed {args.seed}",
        f"- command: `python {meta['command']}`; wall {meta['wall_seconds']} s",
        f"- counterfactuals: {args.counterfactuals}; reference CNN, {args.epochs} epochs, Adadelta lr {args.lr}; "
        f"real share of mixed batches {args.real_fraction}; domain adversary at {args.adversary}",
        "- validation: the training digits with colours / textures drawn at random (not the test set)\n",
        "| variant | train % | validation % | test % | " + " | ".join(f"follows {f} %" for f in factors) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(factors),
        *(f"| {name} | {100 * r['train_accuracy']:.1f} | {100 * r['validation_accuracy']:.1f} | "
          f"{100 * r['test_accuracy']:.1f} | "
          + " | ".join(f"{100 * r['follows'][f]:.1f}" for f in factors) + " |" for name, r in results.items()),
        ""]), args.out)
    return results


if __name__ == "__main__":
    main()
