"""The bench's mask check on trained MNIST CGNs: the share of each do(shape)'s masks that a digit
classifier trained on MNIST's real stroke masks reads as that digit (mechanisms/mnist/mask_reader.py).
A class under 50% is a collapsed shape mechanism, which `scmgen bench table1` trains on from.

    python benchmarks/mask_readability.py results/table1/cache/*/seed0/cgn-*/model   # ~1 min on 2 cores

Each argument is a model/ folder or a checkpoint folder (whose masks are oriented as training would
leave them). Appends a Markdown section to benchmarks/RESULTS.md (--out, or - for none).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import publish  # noqa: E402
from mechanisms.mnist.mask_reader import mask_readability, train_mask_reader  # noqa: E402
from scmgen.model import SCM  # noqa: E402
from scmgen.provenance import run_metadata  # noqa: E402
from scmgen.table1 import UNREADABLE, unreadable_classes  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", type=Path, help="model/ or checkpoint folders of MNIST CGNs")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--limit", type=int, default=None, help="train the reader on the first N digits (smoke runs)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    reader, reader_accuracy = train_mask_reader(limit=args.limit)
    results, rows = {}, []
    for folder in args.models:
        cgn = SCM.from_pretrained(folder, "cpu").eval()
        if (folder / "trainer_state.pt").exists():  # a checkpoint is saved before its masks are oriented
            cgn.mechanisms["mask"].after_training()
        per_class = results[str(folder)] = mask_readability(cgn, reader, per_class=args.per_class)
        unreadable = unreadable_classes(per_class)
        rows.append(f"| `{folder}` | {' '.join(f'{100 * v:.0f}' for v in per_class)} | "
                    f"{100 * min(per_class):.0f} | {', '.join(map(str, unreadable)) or 'none'} |")
    meta = run_metadata("cpu", wall_seconds=round(time.perf_counter() - start, 1))
    publish("\n".join([
        f"\n## Mask readability of trained CGNs, {meta['time'][:10]}\n",
        f"- commit {meta['commit']}, torch {meta['torch']}, {meta['cpu']}, {meta['machine']}, device cpu",
        f"- command: `python {meta['command']}`; wall {meta['wall_seconds']} s",
        f"- reader: {100 * reader_accuracy:.1f}% on MNIST's test masks; {args.per_class} masks per class; "
        f"unreadable: under {100 * UNREADABLE:.0f}%\n",
        "| model | per class do(shape=0..9) % | lowest | unreadable |", "|---|---|---:|---|", *rows, ""]), args.out)
    return results


if __name__ == "__main__":
    main()
