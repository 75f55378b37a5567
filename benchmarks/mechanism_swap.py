"""Which of a CGN's mechanisms holds back its counterfactuals as training data: the bench's ceiling
classifier (the reference CNN on Table 1's schedule) trained on sets whose mask, texture layers or
both come from the data set's own generating process instead of the CGN, each tested on the test split.

    python benchmarks/mechanism_swap.py results/table1/cache/wildlife/seed0/cgn-3fac0df168/model \\
        --dataset wildlife --seeds 0,1

Every set holds the same --n draws: a training digit (its mask, and its label as the shape) with a
texture and a background class drawn uniformly. The CGN's layers are what its mask and texture
mechanisms give under do(shape, texture, background) of those labels; the true ones are the digit's
binarised mask and the data set's own texture painters. Layers are composed as the CGN's composer
does, m * f + (1 - m) * b. What "CGN: every mechanism" loses against "truth: every mechanism" is what
the CGN costs the classifier; the two swapped rows say which mechanism holds how much of it.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.ceiling import load_cgn, real_sets, train_ceiling  # noqa: E402
from benchmarks.report import publish  # noqa: E402
from scmgen.classify import per_class_rate, predictions  # noqa: E402
from scmgen.data import ImageSet, to_float, to_uint8  # noqa: E402
from scmgen.model import SCM  # noqa: E402
from scmgen.provenance import run_metadata  # noqa: E402
from scmgen.table1 import DATASETS, graph_spec  # noqa: E402

# (row, where the mask comes from, where the object and background layers come from)
ROWS = (("CGN: every mechanism", "cgn", "cgn"), ("true mask, CGN textures", "true", "cgn"),
        ("CGN mask, true textures", "cgn", "true"), ("truth: every mechanism", "true", "true"))
LABELS = ("shape", "texture", "background")
CHUNK = 500


def cgn_layers(cgn: SCM, labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The CGN's mask (in [0, 1]) and texture layers (in [-1, 1]) under do(labels), chunk by chunk."""
    roles = cgn.spec.nodes[cgn.spec.output].inputs
    if set(roles) != {"mask", "foreground", "background"} or not set(LABELS) <= set(cgn.spec.nodes):
        raise SystemExit(f"{cgn.spec.name}: expected an alpha composer output and label nodes {', '.join(LABELS)}")
    parts: dict[str, list[torch.Tensor]] = {role: [] for role in roles}
    n = len(labels["shape"])
    with torch.inference_mode():
        for start in range(0, n, CHUNK):
            do = {k: v[start:start + CHUNK] for k, v in labels.items()}
            values = cgn.sample(len(do["shape"]), do, seed=start, targets=list(roles.values()))
            for role, node in roles.items():
                parts[role].append(values[node].float())
    return {role: torch.cat(p) for role, p in parts.items()}


def truth(dataset: str) -> tuple[torch.Tensor, torch.Tensor, Callable, Callable]:
    """The data set's training masks, their labels and its two texture painters (true_mechanisms)."""
    from mechanisms.mnist.datasets import DATASETS as BUILDERS
    from mechanisms.mnist.datasets import true_mechanisms

    _, spec = graph_spec(dataset)
    params = {k: v for k, v in spec.data.params.items() if k not in ("correlation", "seed")}
    return true_mechanisms(BUILDERS[spec.data.plugin], "train", **params)


def compose(mask: torch.Tensor, foreground: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """uint8 images, as the CGN's alpha composer makes them."""
    return torch.cat([to_uint8(m * f + (1 - m) * b) for m, f, b in
                      zip(mask.split(CHUNK), foreground.split(CHUNK), background.split(CHUNK))])


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a trained CGN's model folder (e.g. a bench cache's cgn-*/model)")
    parser.add_argument("--dataset", choices=[d for d in DATASETS if d != "colored"], default="wildlife")
    parser.add_argument("--n", type=int, default=50_000, help="images per set (the bench's counterfactual sets: 50000)")
    parser.add_argument("--seeds", default="0", help="classifier seeds, comma-separated")
    parser.add_argument("--draw-seed", type=int, default=0, help="seed of the digits and classes drawn")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N test images (smoke runs)")
    parser.add_argument("--epochs", type=int, default=None, help="classifier epochs (default: Table 1's)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.n < 10:
        parser.error(f"--n {args.n}: expected at least 10 images")
    cgn = load_cgn(parser, args.model, args.dataset)
    test = real_sets(args.dataset, args.limit)[1]

    masks, digit_labels, paint_object, paint_background = truth(args.dataset)
    g = torch.Generator().manual_seed(args.draw_seed)
    digits = torch.randperm(len(digit_labels), generator=g)[:args.n]
    n = len(digits)
    labels = {"shape": digit_labels[digits], "texture": torch.randint(10, (n,), generator=g),
              "background": torch.randint(10, (n,), generator=g)}
    layer = (n, 3, *masks.shape[2:])  # a double-colored painter gives one colour per image: spread it
    layers = {"true": {"mask": masks[digits].float(),
                       "foreground": to_float(paint_object(labels["texture"], g)(slice(None)).expand(layer)),
                       "background": to_float(paint_background(labels["background"], g)(slice(None)).expand(layer))},
              "cgn": cgn_layers(cgn, labels)}
    epochs = {"epochs": args.epochs} if args.epochs else {}
    results, rows = {}, []
    for name, mask_from, textures_from in ROWS:
        images = compose(layers[mask_from]["mask"], layers[textures_from]["foreground"],
                         layers[textures_from]["background"])
        data = ImageSet(images, labels["shape"], dict(labels))
        runs = []
        for seed in seeds:
            hits = predictions(train_ceiling(data, seed, **epochs), test.images) == test.labels
            runs.append({"test": float(hits.float().mean()), "per_class": per_class_rate(hits, test.labels)})
        mean = sum(r["test"] for r in runs) / len(runs)
        results[name] = {"runs": runs, "mean": mean}
        gain = mean - results[ROWS[0][0]]["mean"]
        per_class = [sum(r["per_class"][c] for r in runs) / len(runs) for c in range(10)]
        per_seed = " / ".join(f"{100 * r['test']:.1f}" for r in runs)
        rows.append(f"| {name} | {per_seed} | {100 * mean:.1f} | "
                    f"{100 * gain:+.1f} | {' '.join(f'{100 * v:.0f}' for v in per_class)} |")
        print(rows[-1], flush=True)
    meta = run_metadata("cpu", seeds=seeds, wall_seconds=round(time.perf_counter() - start, 1))
    publish("\n".join([
        f"\n## Mechanism swap: which CGN mechanism costs the classifier ({args.dataset}), {meta['time'][:10]}\n",
        f"- commit {meta['commit']}, torch {meta['torch']}, {meta['cpu']}, {meta['machine']}, device cpu",
        f"- command: `python {meta['command']}`; wall {meta['wall_seconds']} s",
        f"- CGN: `{args.model}`; {n} images per set (digits and classes drawn with seed {args.draw_seed}); "
        f"the ceiling's classifier and schedule, seeds {args.seeds}; test: {len(test)} images\n",
        "| training set | test % per seed | mean | vs CGN | per class 0..9, mean % |", "|---|---|---:|---:|---|",
        *rows, ""]), args.out)
    return results


if __name__ == "__main__":
    main()
