"""Training images/s of Table 1's classifier (the reference MNIST CNN) through
`scmgen.classify.train_classifier`, with its input batch norm folded into the first convolution
(`scmgen.classifier.ReferenceCNN`, what ships) and with the same layers run one after another as a
plain `nn.Sequential` (the reference's forward), as ratios to the first row. The two forms take
turns, `--repeats` times each, and each row is the median of its turns (machines are noisy).

    OMP_NUM_THREADS=1 python benchmarks/mnist_classifier_step.py                # ~2 min
    OMP_NUM_THREADS=1 python benchmarks/mnist_classifier_step.py --precisions fp32,bf16 --heads 3

Trained on the first `--images` images of the colored MNIST training set, one epoch per turn, at
the table's batch 64 and Adadelta lr 3.0, from a fresh seeded network each turn. Appends a Markdown
section (commit, date, machine, command) to benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from report import publish  # noqa: E402

from scmgen.classifier import InvariantClassifier, heads_from_spec  # noqa: E402
from scmgen.classify import TensorImages, train_classifier  # noqa: E402
from scmgen.data import load_dataset  # noqa: E402
from scmgen.provenance import run_metadata  # noqa: E402
from scmgen.table1 import graph_spec  # noqa: E402

FORMS = ("sequential", "folded")


def classifier(form: str, heads: int) -> InvariantClassifier:
    """The table's classifier; `sequential` runs its backbone's layers one after another."""
    all_heads = heads_from_spec(graph_spec("colored")[1])  # shape, texture, background: 10 classes each
    model = InvariantClassifier("mnist.cnn", dict(list(all_heads.items())[:heads]))
    if form == "sequential":
        model.backbone = nn.Sequential(*model.backbone)
    return model


def images_per_second(form: str, real: TensorImages, heads: int, precision: str, seed: int = 0) -> float:
    torch.manual_seed(seed)
    result = train_classifier(classifier(form, heads), real, real_fraction=1.0, recipe="mnist", epochs=1,
                              batch_size=64, lr=3.0, seed=seed, device="cpu", precision=precision, progress=False)
    return result.images_per_second


def training_images(count: int) -> TensorImages:
    path, spec = graph_spec("colored")
    data = load_dataset(spec, str(path), "train")
    return TensorImages(data.images[:count], {"label": data.labels[:count]})


def main(argv: list[str] | None = None) -> dict[tuple[str, str], float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default="fp32")
    parser.add_argument("--heads", type=int, default=1, choices=(1, 3),
                        help="1: the baselines' classifier; 3: Original + CGN's (one head per mechanism)")
    parser.add_argument("--images", type=int, default=6400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"), help="'-': print only")
    args = parser.parse_args(argv)
    real = training_images(args.images)
    start = time.perf_counter()
    rates: dict[tuple[str, str], list[float]] = {}
    for precision in args.precisions.split(","):
        images_per_second(FORMS[0], real, args.heads, precision)  # warm-up: first-call allocations
        for _ in range(args.repeats):
            for form in FORMS:
                rates.setdefault((precision, form), []).append(images_per_second(form, real, args.heads, precision))
    base = statistics.median(next(iter(rates.values())))
    rows = [f"| {precision} | {form} | {statistics.median(r):.0f} | {statistics.median(r) / base:.2f}x |"
            for (precision, form), r in rates.items()]
    meta = run_metadata("cpu", wall_seconds=round(time.perf_counter() - start, 1))
    section = "\n".join([
        f"\n## Table 1's classifier: training throughput, {meta['time'][:10]}\n",
        f"- commit {meta['commit']}, torch {meta['torch']}, {meta['cpu']}, {meta['machine']}, device cpu",
        f"- command: `python {meta['command']}`; {args.images} colored-MNIST training images, batch 64, "
        f"{args.heads} head(s), median of {args.repeats} one-epoch runs per row, taken in turns; "
        f"wall {meta['wall_seconds']} s; baseline = the first row",
        "- sequential: the backbone's layers one after another (the reference's forward); folded: the input "
        "batch norm folded into the first convolution (`ReferenceCNN`, shipped)\n",
        "| precision | backbone forward | images/s | vs baseline |",
        "|---|---|---:|---:|",
        *rows, ""])
    publish(section, args.out)
    return {key: statistics.median(r) for key, r in rates.items()}


if __name__ == "__main__":
    main()
