"""How far any classifier can get on double-colored MNIST's test set: there, object and background
colour are drawn independently, so about one test image in ten paints the digit in (almost) its
background's colour, and its shape is invisible but for the per-image colour jitter.

    python benchmarks/double_colored_bound.py          # ~2 min on 2 cores

Trains the bench's ceiling classifier (the reference CNN on the real training digits with random
colours, Table 1's schedule) and reports its test accuracy on the images whose two colours are the
same palette entry and on the others, and the bound that follows: every other image right, plus
the ceiling's rate on the same-colour ones (about chance where they are unreadable). Appends a
section to benchmarks/RESULTS.md (--out, or - for none).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.ceiling import real_sets, train_ceiling  # noqa: E402
from benchmarks.report import publish  # noqa: E402
from scmgen.classify import predictions  # noqa: E402
from scmgen.provenance import run_metadata  # noqa: E402
from scmgen.table1 import Settings  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=Settings.epochs)
    parser.add_argument("--lr", type=float, default=Settings.lr)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images (smoke runs)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    real, test = real_sets("double_colored", args.limit)
    ceiling = train_ceiling(real, args.seed, args.epochs, args.lr)
    hits = predictions(ceiling, test.images) == test.labels
    # object colour is palette[(texture + 4) % 10], background colour palette[background]
    same = (test.factors["texture"] + 4) % 10 == test.factors["background"]
    share, on_same, elsewhere = float(same.float().mean()), float(hits[same].float().mean()), \
        float(hits[~same].float().mean())
    result = {"test_accuracy": float(hits.float().mean()), "same_colour_share": share,
              "accuracy_same_colour": on_same, "accuracy_elsewhere": elsewhere,
              "bound": 1 - share + share * on_same}
    meta = run_metadata("cpu", seed=args.seed, wall_seconds=round(time.perf_counter() - start, 1))
    publish("\n".join([
        f"\n## Double-colored MNIST: the same-colour bound, {meta['time'][:10]}\n",
        f"- commit {meta['commit']}, torch {meta['torch']}, {meta['cpu']}, {meta['machine']}, device cpu, "
        f"seed {args.seed}",
        f"- command: `python {meta['command']}`; wall {meta['wall_seconds']} s",
        f"- ceiling classifier (reference CNN, real training digits with random colours, {args.epochs} epochs, "
        f"Adadelta lr {args.lr}): test accuracy {100 * result['test_accuracy']:.1f}%\n",
        "| test images | share % | ceiling accuracy % |", "|---|---:|---:|",
        f"| object and background the same palette colour | {100 * share:.1f} | {100 * on_same:.1f} |",
        f"| the others | {100 * (1 - share):.1f} | {100 * elsewhere:.1f} |",
        "",
        f"Bound: every other image right and the same-colour ones at the ceiling's rate: "
        f"{100 * result['bound']:.1f}%.", ""]), args.out)
    return result


if __name__ == "__main__":
    main()
