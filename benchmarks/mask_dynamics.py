"""How each class of an MNIST CGN settles over one training run, read from its checkpoints (live
weights, before the final orientation): per class, the mean mask, the mask variation, and how far
the two texture layers' colours are from those of real images of the class.

    python benchmarks/mask_dynamics.py RUN --dataset double_colored   # RUN: a training folder
    # with checkpoints kept along the way (train.checkpoint_every / keep_checkpoints); ~1 min

A class that collapses shows here long before the run ends: a mean mask near 0 or 1 (empty or
full), variation above about 0.3 (speckle), or a layer colour distance well above the others'
(a layer the mask hides drifting to a colour the class's images do not have). The colour distance
is the `layers.colours` loss on 50 samples and 50 real training images of the class. Appends a
Markdown section to benchmarks/RESULTS.md (--out, or - for none).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import publish  # noqa: E402
from mechanisms.losses import LayerColours  # noqa: E402
from scmgen.data import load_dataset  # noqa: E402
from scmgen.model import SCM  # noqa: E402
from scmgen.provenance import run_metadata  # noqa: E402
from scmgen.table1 import graph_spec  # noqa: E402

STATISTICS = ("mean mask", "mask variation", "layer colour distance")
PER_CLASS = 50  # samples and real images per class


def class_dynamics(cgn: SCM, real: dict[int, torch.Tensor], per_class: int = PER_CLASS) -> dict[str, list[float]]:
    """The STATISTICS of each class of one checkpoint."""
    mask = cgn.mechanisms["mask"].class_statistics()
    out = {"mean mask": mask["coverage"].tolist(), "mask variation": mask["variation"].tolist()}
    colours = LayerColours({}, pixels=256)
    torch.manual_seed(0)
    distances = []
    for c in sorted(real):
        labels = torch.full((per_class,), c)
        with torch.inference_mode():
            v = cgn.sample(per_class, {"shape": labels, "texture": labels, "background": labels}, seed=c,
                           targets=["foreground", "backdrop"])
            distances.append(float(colours(v["foreground"], v["backdrop"], real[c][:per_class])))
    return {**out, "layer colour distance": distances}


def main(argv: list[str] | None = None) -> dict[int, dict[str, list[float]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a training run folder with checkpoints/step_*")
    parser.add_argument("--dataset", default="double_colored")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    steps = sorted(p for p in (args.run / "checkpoints").glob("step_*") if p.is_dir())
    if not steps:
        parser.error(f"{args.run}/checkpoints holds no step_* checkpoint")
    path, spec = graph_spec(args.dataset)
    train = load_dataset(spec, str(path), "train")
    real = {c: train.batch(torch.nonzero(train.labels == c)[:PER_CLASS, 0])[0] for c in range(10)}
    results = {int(p.name.split("_")[1]): class_dynamics(SCM.from_pretrained(p).eval(), real) for p in steps}
    meta = run_metadata("cpu", wall_seconds=round(time.perf_counter() - start, 1))
    lines = [f"\n## Per-class mask dynamics ({args.dataset}), {meta['time'][:10]}\n",
             f"- commit {meta['commit']}, torch {meta['torch']}, {meta['cpu']}, {meta['machine']}",
             f"- command: `python {meta['command']}`; wall {meta['wall_seconds']} s",
             f"- run: {args.run}; live weights of each checkpoint, before orientation\n"]
    for name in STATISTICS:
        lines += [f"{name}, per class:\n", "| step | " + " | ".join(map(str, range(10))) + " |",
                  "|---:|" + "---:|" * 10,
                  *(f"| {step} | " + " | ".join(f"{v:.2f}" for v in r[name]) + " |" for step, r in results.items()), ""]
    publish("\n".join(lines), args.out)
    return results


if __name__ == "__main__":
    main()
