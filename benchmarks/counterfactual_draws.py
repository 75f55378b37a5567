"""How a CGN's counterfactual set is drawn: does trading diversity for typical, cleaner masks
(BigGAN's truncation trick; the CGN reference generates its ImageNet set at 0.5), or drawing more
distinct masks per set (fewer counterfactuals per mask), give Table 1's classifiers better data?

    python benchmarks/counterfactual_draws.py results/table1/cache/wildlife/seed0/cgn-3fac0df168/model \\
        --dataset wildlife --truncations 'none;u_shape=0.75;u_shape=0.5;0.5' --per-shape 10,1

Per truncation (as `scmgen generate --truncation` takes it; none: untruncated) and number of
counterfactuals per mask (`scmgen generate --per-shape`; the bench's own set is none, 10) the script
generates the bench's counterfactual set (--n images, the bench's precision, the CGN's seed), reads its shape
fidelity with the ceiling classifier, and trains Table 1's counterfactuals-only and
Original + CGN (three heads, half real) classifiers on it. It reports their accuracy on a validation
set (the training digits with colours / textures drawn at random, not the test set: the column to
choose on) beside the test set's.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.ceiling import load_cgn, real_sets, train_ceiling  # noqa: E402
from benchmarks.real_half_shortcut import train_variant  # noqa: E402
from benchmarks.report import publish  # noqa: E402
from scmgen.classify import accuracy, counterfactual_set, predictions  # noqa: E402
from scmgen.data import load_dataset  # noqa: E402
from scmgen.noise import parse_truncation  # noqa: E402
from scmgen.provenance import run_metadata  # noqa: E402
from scmgen.sampling import generate_dataset  # noqa: E402
from scmgen.table1 import DATASETS, Settings, graph_spec  # noqa: E402

VARIANTS = ("counterfactuals only", "three heads")


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a trained CGN's model folder (e.g. a bench cache's cgn-*/model)")
    parser.add_argument("--dataset", choices=list(DATASETS), default="wildlife")
    parser.add_argument("--truncations", default="none;u_shape=0.5",
                        help="semicolon-separated truncations, each 'none' or as scmgen generate --truncation")
    parser.add_argument("--per-shape", default="10", help="comma-separated counterfactuals per mask (the bench: 10)")
    parser.add_argument("--n", type=int, default=Settings.counterfactuals, help="counterfactuals per set")
    parser.add_argument("--seed", type=int, default=0, help="generation and classifier seed")
    parser.add_argument("--epochs", type=int, default=Settings.epochs)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N real images (smoke runs)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    cgn = load_cgn(parser, args.model, args.dataset)
    truncations = {t: ({} if t == "none" else parse_truncation(t, cgn.spec)) for t in args.truncations.split(";")}
    per_shapes = [int(k) for k in args.per_shape.split(",")]
    path, spec = graph_spec(args.dataset)
    real, _ = real_sets(args.dataset, args.limit)  # the validation set, and the ceiling's training set
    train, test = load_dataset(spec, str(path), "train"), load_dataset(spec, str(path), "test")
    if args.limit:
        train, test = train.subset(torch.arange(args.limit)), test.subset(torch.arange(min(args.limit, len(test))))
    ceiling = train_ceiling(real, args.seed, args.epochs)
    options = argparse.Namespace(dataset=args.dataset, epochs=args.epochs, lr=Settings.lr, seed=args.seed,
                                 real_fraction=0.5, adversary=0.0)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for (name, truncation), per_shape in itertools.product(truncations.items(), per_shapes):
            folder = Path(tmp) / f"set{len(results)}"
            generate_dataset(cgn, args.n, folder, per_shape=per_shape, seed=args.seed, image_format="safetensors",
                             precision=Settings.precision, truncation=truncation)
            cf = counterfactual_set(folder)
            row: dict[str, Any] = {"fidelity": float((predictions(ceiling, cf.images) == cf.labels["shape"])
                                                     .float().mean())}
            for variant in VARIANTS:
                model = train_variant(variant, train, cf, options)
                row[variant] = {"validation": accuracy(model, real),
                                "test": float((predictions(model, test.images) == test.labels).float().mean())}
            results[f"{name} | {per_shape}"] = row
            print(name, per_shape, row, flush=True)
    meta = run_metadata("cpu", seed=args.seed, wall_seconds=round(time.perf_counter() - start, 1))
    publish("\n".join([
        f"\n## {DATASETS[args.dataset].title}: how the counterfactuals are drawn, {meta['time'][:10]}\n",
        f"- commit {meta['commit']}, torch {meta['torch']}, {meta['cpu']}, {meta['machine']}, device cpu, "
        f"seed {args.seed}",
        f"- command: `python {meta['command']}`; wall {meta['wall_seconds']} s",
        f"- CGN: {args.model}; {args.n} counterfactuals per set; classifiers: reference CNN, "
        f"{args.epochs} epochs, Adadelta lr {Settings.lr}",
        "- validation: the training digits with colours / textures drawn at random (choose on it, not on test); "
        "fidelity: the ceiling classifier reads do(shape)\n",
        "| truncation | per mask | shape fidelity % | CF only: validation % | CF only: test % | "
        "Original + CGN: validation % | Original + CGN: test % |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(f"| {name} | {100 * r['fidelity']:.1f} | "
          + " | ".join(f"{100 * r[v]['validation']:.1f} | {100 * r[v]['test']:.1f}" for v in VARIANTS) + " |"
          for name, r in results.items()),
        ""]), args.out)
    return results


if __name__ == "__main__":
    main()
