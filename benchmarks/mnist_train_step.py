"""Training images/s of an MNIST CGN graph through the generic trainer, per precision and batch
size, as ratios to the first combination measured in the same run (machines are noisy).

    python benchmarks/mnist_train_step.py --graph cgn_double_colored_mnist --batch-sizes 64 --precisions fp32,bf16
    python benchmarks/mnist_train_step.py --graph cgn_wildlife_mnist --batch-sizes 64 --precisions bf16 \
        --layouts contiguous,channels_last
    python benchmarks/mnist_train_step.py --batch-sizes 64 --precisions bf16 --without layer_colours
    python benchmarks/mnist_train_step.py --batch-sizes 64 --precisions bf16 --compile
    python benchmarks/mnist_train_step.py --batch-sizes 64 --precisions fp32 \
        --set nodes.foreground.params.width=32 --set nodes.backdrop.params.width=32

`--without NAME` also measures each combination with that loss term left out of the step (what
the term costs); `--compile` also measures it with every mechanism compiled (torch.compile; its
compile time falls in the warm-up steps); `--set KEY=VALUE` (repeatable) also measures it with
the graph changed by those overrides (what a recipe change costs or saves).

Prints a Markdown table and appends it, with commit, date and machine, to benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mechanisms.mnist.generators import ConditionalGenerator  # noqa: E402
from scmgen.cli import resolve_graph  # noqa: E402
from scmgen.data import load_dataset  # noqa: E402
from scmgen.model import SCM  # noqa: E402
from scmgen.provenance import run_metadata  # noqa: E402
from scmgen.trainer import Trainer  # noqa: E402

LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def images_per_second(graph: Path, batch: int, precision: str, steps: int, warmup: int, out: Path,
                      layout: str = "channels_last", without: str | None = None, compiled: bool = False,
                      overrides: tuple[str, ...] = ()) -> float:
    model = SCM.from_yaml(graph, [f"train.batch_size={batch}", f"train.precision={precision}", *overrides])
    for mechanism in model.mechanisms.values():
        if isinstance(mechanism, ConditionalGenerator):
            mechanism.memory_format = LAYOUTS[layout]
        if compiled:
            mechanism.compile()
    trainer = Trainer(model, load_dataset(model.spec, str(graph)), out, progress=False, tensorboard=False)
    if without is not None:
        if without not in [t.name for t in trainer.terms]:
            raise SystemExit(f"--without {without}: not a loss of {graph.stem} ({', '.join(t.name for t in trainer.terms)})")
        trainer.terms = [t for t in trainer.terms if t.name != without]
    for _ in range(warmup):
        trainer.train_step()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    return steps * batch * model.spec.train.accumulate / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", default="cgn_double_colored_mnist")
    parser.add_argument("--batch-sizes", default="16,64,128")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--layouts", default="channels_last",
                        help="Generator activations: channels_last (the plugins' own), contiguous, or both")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--without", default=None, help="a loss term to also measure the step without")
    parser.add_argument("--compile", action="store_true", help="also measure with the mechanisms compiled")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="graph override (repeatable): also measure with all of them applied")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    args = parser.parse_args()
    graph = resolve_graph(args.graph)
    rows, base = [], None
    start = time.perf_counter()
    for batch, precision, layout, without, compiled, overrides in itertools.product(
            [int(b) for b in args.batch_sizes.split(",")], args.precisions.split(","), args.layouts.split(","),
            [None, args.without] if args.without else [None], [False, True] if args.compile else [False],
            [(), tuple(args.overrides)] if args.overrides else [()]):
        rate = images_per_second(graph, batch, precision, args.steps, args.warmup, Path("/tmp/scmgen-bench"),
                                 layout, without, compiled, overrides)
        base = base or rate
        losses = f"without {without}" if without else "all"
        graph_cell = ", ".join(f"`{o}`" for o in overrides) or "as shipped"
        rows.append(f"| {batch} | {precision} | {layout} | {losses} | {'compiled' if compiled else 'eager'} "
                    f"| {graph_cell} | {rate:.0f} | {rate / base:.2f}x |")
        print(rows[-1], flush=True)
    meta = run_metadata("cpu", wall_seconds=round(time.perf_counter() - start, 1))
    section = "\n".join([
        f"\n## MNIST CGN training throughput ({graph.stem}), {meta['time'][:10]}\n",
        f"- commit {meta['commit']}, torch {meta['torch']}, {meta['cpu']}, {meta['machine']}, device cpu",
        f"- command: `python {meta['command']}`; {args.warmup} warm-up + {args.steps} timed steps each; "
        f"wall {meta['wall_seconds']} s; baseline = the first row\n",
        "| batch | precision | generator layout | losses | mechanisms | graph | images/s | vs baseline |",
        "|---:|---|---|---|---|---|---:|---:|",
        *rows, ""])
    with open(args.out, "a") as f:
        f.write(section)
    print(section)


if __name__ == "__main__":
    main()
