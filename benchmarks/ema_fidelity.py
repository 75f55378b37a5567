"""Live weights against their moving average (`train.ema`) in one MNIST CGN training run: the shape
fidelity of counterfactuals drawn from the run's last checkpoint (the live weights) and from its
model/ (the average), so the two differ only in the averaging.

    python benchmarks/ema_fidelity.py results/table1/cache/double_colored/seed0/cgn-* \\
        --dataset double_colored                       # ~2 min on 2 cores

Shape fidelity: the share of counterfactuals that the bench's ceiling classifier (the reference CNN
trained on the real training digits with random colours / textures) labels as their do(shape),
overall and per class; textures and backgrounds drawn at random. Appends a Markdown section to
benchmarks/RESULTS.md (--out, or - for none).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.ceiling import add_arguments, real_sets, train_ceiling  # noqa: E402
from benchmarks.report import publish  # noqa: E402
from scmgen.classifier import InvariantClassifier  # noqa: E402
from scmgen.classify import per_class_rate, predictions  # noqa: E402
from scmgen.data import to_uint8  # noqa: E402
from scmgen.model import SCM  # noqa: E402
from scmgen.provenance import run_metadata  # noqa: E402


def fidelity(ceiling: InvariantClassifier, cgn: SCM, per_class: int, seed: int) -> tuple[float, list[float]]:
    shapes = torch.arange(10).repeat_interleave(per_class)
    g = torch.Generator().manual_seed(seed)
    labels = {"shape": shapes, "texture": torch.randint(10, shapes.shape, generator=g),
              "background": torch.randint(10, shapes.shape, generator=g)}
    with torch.inference_mode():
        images = cgn.sample(len(shapes), labels, seed=seed, targets=[cgn.spec.output])[cgn.spec.output]
    hits = predictions(ceiling, to_uint8(images)) == shapes
    return float(hits.float().mean()), per_class_rate(hits, shapes)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a training run folder with model/ and checkpoints/")
    parser.add_argument("--per-class", type=int, default=200)
    add_arguments(parser)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    ceiling = train_ceiling(real_sets(args.dataset, args.limit)[0], args.seed)
    latest = args.run / "checkpoints" / (args.run / "checkpoints" / "latest").read_text().strip()
    average = SCM.from_pretrained(args.run / "model", "cpu").eval()
    live = SCM.from_pretrained(latest, "cpu").eval()
    # a checkpoint is saved before orientation: orient its masks as the finished model's were
    live.mechanisms["mask"].after_training()
    results, rows = {}, []
    for name, cgn in ((f"live weights ({latest.name})", live), ("moving average (model/)", average)):
        mean, per_class = fidelity(ceiling, cgn, args.per_class, args.seed)
        results[name] = {"fidelity": mean, "per_class": per_class,
                         "flipped": torch.nonzero(cgn.mechanisms["mask"].inverted).flatten().tolist()}
        rows.append(f"| {name} | {100 * mean:.1f} | {' '.join(f'{100 * v:.0f}' for v in per_class)} | "
                    f"{', '.join(map(str, results[name]['flipped'])) or 'none'} |")
    meta = run_metadata("cpu", seed=args.seed, wall_seconds=round(time.perf_counter() - start, 1))
    publish("\n".join([
        f"\n## Live weights against their moving average ({args.dataset}), {meta['time'][:10]}\n",
        f"- commit {meta['commit']}, torch {meta['torch']}, {meta['cpu']}, {meta['machine']}, device cpu, "
        f"seed {args.seed}",
        f"- command: `python {meta['command']}`; wall {meta['wall_seconds']} s",
        f"- run: `{args.run}`; {args.per_class} counterfactuals per class\n",
        "| weights | shape fidelity % | per class do(shape=0..9) % | classes flipped |", "|---|---:|---|---|",
        *rows, ""]), args.out)
    return results


if __name__ == "__main__":
    main()
