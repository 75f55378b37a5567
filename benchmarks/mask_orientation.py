"""Mask orientation ablation: one trained MNIST CGN, its counterfactuals with the masks as training
left them, with the classes on the background flipped (MaskGenerator.after_training) but the
textures left as they were, and oriented as the shipped graphs do it (flipped classes also swap
their foreground and background textures, TextureGenerator), and what a classifier trained on each
set reaches on the real test set whose colours / textures are random.

    python benchmarks/mask_orientation.py results/table1/cache/double_colored/seed0/cgn-*/model \\
        --dataset double_colored                       # ~4 min on 2 cores

For each variant: the classes flipped, the counterfactuals' shape fidelity (the share a classifier
trained on real digits with random colours / textures labels as their do(shape)), and the test
accuracy of the reference CNN trained on the counterfactuals alone (the bench's `cgn_only` row,
same schedule). Appends a Markdown section to benchmarks/RESULTS.md (--out, or - for none).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.ceiling import add_arguments, real_sets, train_ceiling  # noqa: E402
from benchmarks.report import publish  # noqa: E402
from mechanisms.mnist.generators import TextureGenerator  # noqa: E402
from scmgen.classifier import InvariantClassifier  # noqa: E402
from scmgen.classify import accuracy, counterfactual_set, train_classifier  # noqa: E402
from scmgen.data import ImageSet  # noqa: E402
from scmgen.model import SCM  # noqa: E402
from scmgen.provenance import run_metadata  # noqa: E402
from scmgen.sampling import generate_dataset  # noqa: E402
from scmgen.table1 import Settings  # noqa: E402


def cnn(cf: object, epochs: int, seed: int) -> InvariantClassifier:
    """The bench's `cgn_only` classifier and schedule: the reference CNN, shape head, Adadelta, bf16."""
    torch.manual_seed(seed)
    model = InvariantClassifier("mnist.cnn", {"shape": 10})
    train_classifier(model, None, cf, real_fraction=0.0, recipe="mnist", epochs=epochs, lr=Settings.lr,
                     batch_size=Settings.batch_size, seed=seed, device="cpu", precision=Settings.precision, progress=False)
    return model


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a trained MNIST CGN (its model/ folder)")
    parser.add_argument("--counterfactuals", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=Settings.epochs)
    add_arguments(parser)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    real, test = real_sets(args.dataset, args.limit)
    ceiling = train_ceiling(real, args.seed, args.epochs)
    cgn = SCM.from_pretrained(args.model, "cpu").eval()
    mask = cgn.mechanisms["mask"]
    rows, results = [], {}
    textures = {k: m._bound for k, m in cgn.mechanisms.items() if isinstance(m, TextureGenerator) and m._bound}
    variants = (("as trained", False, False), ("masks flipped, textures not", True, False),
                ("oriented (masks and textures)", True, True))
    for name, orient, swap in variants:
        mask.inverted.zero_()
        if orient:
            mask.after_training()  # from the masks as trained: flips the classes above one half
        for key, bound in textures.items():
            cgn.mechanisms[key]._bound = bound if swap else ()
        if swap and not textures:
            print(f"{args.model}: no texture bound to the mask (swap_with / oriented_by), skipping '{name}'")
            continue
        flipped = torch.nonzero(mask.inverted).flatten().tolist()
        coverage = mask.coverage().tolist()
        with tempfile.TemporaryDirectory() as tmp:
            generate_dataset(cgn, args.counterfactuals, Path(tmp) / "cf", per_shape=Settings.per_shape, seed=args.seed,
                             batch_size=100, image_format="safetensors", precision=Settings.precision)
            cf = counterfactual_set(Path(tmp) / "cf")
            fidelity = accuracy(ceiling, ImageSet(cf.images, cf.labels["shape"], {}))
            test_accuracy = accuracy(cnn(cf, args.epochs, args.seed), test)
        results[name] = {"flipped": flipped, "coverage": coverage, "fidelity": fidelity,
                         "test_accuracy": test_accuracy}
        rows.append(f"| {name} | {', '.join(map(str, flipped)) or 'none'} | {' '.join(f'{v:.2f}' for v in coverage)} "
                    f"| {100 * fidelity:.1f} | {100 * test_accuracy:.1f} |")
        print(rows[-1], flush=True)
    meta = run_metadata("cpu", seed=args.seed, wall_seconds=round(time.perf_counter() - start, 1))
    publish("\n".join([
        f"\n## Mask orientation ({args.dataset}), {meta['time'][:10]}\n",
        f"- commit {meta['commit']}, torch {meta['torch']}, {meta['cpu']}, {meta['machine']}, device cpu, "
        f"seed {args.seed}",
        f"- command: `python {meta['command']}`; wall {meta['wall_seconds']} s",
        f"- {args.counterfactuals} counterfactuals (10 per mask); classifiers: the reference CNN, {args.epochs} "
        f"epochs; ceiling classifier on the real digits with random colours / textures: "
        f"{100 * accuracy(ceiling, test):.1f}% test\n",
        "| masks | classes flipped | mean mask of do(shape=0..9) | shape fidelity % | CF-only test accuracy % |",
        "|---|---|---|---:|---:|", *rows, ""]), args.out)
    return results


if __name__ == "__main__":
    main()
