"""MNIST CGN throughput: training and generation images/s per graph, batch size and precision, the
FLOP/s they achieve as a fraction of this machine's matmul FLOP/s (measured in the same run, right
around each configuration), generation peak memory, and the ratio to the reference code's speed.

    python benchmarks/mnist_throughput.py             # ~4-5 min on 2 cores
    python benchmarks/mnist_throughput.py --quick     # ~1 min

- Training: `Trainer.train_step` through benchmarks/mnist_train_step.py's `images_per_second` (one
  training loop for both scripts), on the graph's real training data.
- Generation: `scmgen.sampling.generate_dataset` (uint8 safetensors shards, per_shape 10, so each
  shared mask is computed once per 10 images) in a fresh subprocess per configuration, whose peak
  resident set (VmHWM, including the Python and torch runtime) is the memory reported.
- FLOPs per image: torch.utils.flop_counter.FlopCounterMode over one training step (generator
  forward + backward, the critic's forward/backward for the generator loss and the critic step;
  optimiser updates are not counted) and over one `counterfactual_batch` (the forward passes).
- Weights are randomly initialised (the graph's seeded init): speed and memory do not depend on them.

Appends a Markdown section (commit, date, machine, command, load) to benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch
from mnist_train_step import images_per_second
from report import publish
from torch.utils.flop_counter import FlopCounterMode

from scmgen.cli import resolve_graph
from scmgen.data import load_dataset
from scmgen.model import SCM
from scmgen.provenance import run_metadata
from scmgen.sampling import counterfactual_batch, generate_dataset
from scmgen.trainer import Trainer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# CGN_FACTS.md section 7: the reference code on this kind of machine (2 cores); training without
# its VGG16 loss at batch 16, generation at batch 100
REFERENCE_TRAIN = {"cgn_double_colored_mnist": 135.6, "cgn_wildlife_mnist": 40.1}
REFERENCE_GENERATE = {"cgn_double_colored_mnist": 510.0, "cgn_wildlife_mnist": 512.0}
PER_SHAPE = 10
BENCH_OUT = Path(tempfile.gettempdir()) / "scmgen-bench-throughput"


def matmul_gflops(precision: str, n: int = 2048, reps: int = 2) -> float:
    """GFLOP/s of an n x n matmul (median of `reps` after one warm-up)."""
    a, b = torch.randn(n, n, dtype=DTYPES[precision]), torch.randn(n, n, dtype=DTYPES[precision])
    a @ b
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def train_flops_per_image(graph: Path, batch: int = 16) -> float:
    model = SCM.from_yaml(graph, [f"train.batch_size={batch}", "train.precision=fp32"])
    trainer = Trainer(model, load_dataset(model.spec, str(graph)), BENCH_OUT, progress=False, tensorboard=False)
    trainer.train_step()
    with FlopCounterMode(display=False) as counter:
        trainer.train_step()
    return counter.get_total_flops() / batch


def generation_flops_per_image(graph: Path, batch: int = 100) -> float:
    model = SCM.from_yaml(graph).eval()
    with FlopCounterMode(display=False) as counter:
        counterfactual_batch(model, batch // PER_SHAPE, PER_SHAPE, torch.Generator().manual_seed(0))
    return counter.get_total_flops() / batch


def generation_worker(graph: str, precision: str, batch: int, images: int) -> dict[str, Any]:
    """Runs in a fresh process: build the graph, warm up, time generate_dataset; peak RSS."""
    model = SCM.from_yaml(graph).eval()
    rss_model = peak_rss_mib()
    counterfactual_batch(model, 10, PER_SHAPE, torch.Generator().manual_seed(1), precision)  # library warm-up
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        generate_dataset(model, images, Path(tmp) / "set", per_shape=PER_SHAPE, seed=0, batch_size=batch,
                         image_format="safetensors", part_size=max(batch, 10000), precision=precision)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "images": images, "rss_model_mib": rss_model, "rss_peak_mib": peak_rss_mib()}


def peak_rss_mib() -> float:
    """This process's peak resident set: VmHWM. Not ru_maxrss, which on Linux keeps the high-water
    mark of the process image before exec, i.e. a forked child reports at least its parent's RSS."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(graph: Path, precision: str, batch: int, images: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--gen-worker", f"{graph},{precision},{batch},{images}"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"generation worker {graph.stem} {precision} {batch} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs", default="cgn_double_colored_mnist,cgn_wildlife_mnist")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--train-batches", default="16,64,128")
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    parser.add_argument("--gen-batches", default="100,500,1000,2000")
    parser.add_argument("--gen-images", type=int, default=1000,
                        help="images generated per configuration (at least one batch)")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--quick", action="store_true", help="batch 64 training, batch 500 generation (~1 min)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md",
                        help="append the results here ('-': do not write)")
    parser.add_argument("--gen-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.train_batches, args.steps, args.warmup, args.gen_batches, args.gen_images = "64", 4, 1, "500", 500
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.gen_worker:
        graph, precision, batch, images = args.gen_worker.split(",")
        result = generation_worker(graph, precision, int(batch), int(images))
        print(json.dumps(result))
        return result
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    graphs = [resolve_graph(g) for g in args.graphs.split(",") if g]
    precisions = args.precisions.split(",")
    train_batches = [int(b) for b in args.train_batches.split(",") if b]
    gen_batches = [int(b) for b in args.gen_batches.split(",") if b]
    peaks = {p: [] for p in precisions}
    train_rows, gen_rows, flops_lines = [], [], []
    result: dict[str, Any] = {"train": {}, "generation": {}}
    for graph in graphs:
        train_flops = train_flops_per_image(graph) if train_batches else 0.0
        gen_flops = generation_flops_per_image(graph) if gen_batches else 0.0
        flops_lines.append(f"- {graph.stem}: {train_flops / 1e6:.1f} MFLOP per training image, "
                           f"{gen_flops / 1e6:.1f} MFLOP per generated image")
        print(flops_lines[-1], flush=True)
        for batch in train_batches:
            for precision in precisions:
                before = matmul_gflops(precision, args.matmul_size)
                rate = images_per_second(graph, batch, precision, args.steps, args.warmup, BENCH_OUT)
                peak = (before + matmul_gflops(precision, args.matmul_size)) / 2
                peaks[precision].append(peak)
                achieved = rate * train_flops / 1e9
                ref = REFERENCE_TRAIN.get(graph.stem)
                result["train"][(graph.stem, batch, precision)] = rate
                train_rows.append(f"| {graph.stem} | {batch} | {precision} | {rate:.0f} | "
                                  f"{f'{rate / ref:.2f}x' if ref else 'n/a'} | {achieved:.1f} | {peak:.0f} | "
                                  f"{achieved / peak:.1%} |")
                print(train_rows[-1], flush=True)
        for batch in gen_batches:
            images = max(batch, -(-args.gen_images // batch) * batch)
            for precision in precisions:
                before = matmul_gflops(precision, args.matmul_size)
                w = run_worker(graph, precision, batch, images)
                peak = (before + matmul_gflops(precision, args.matmul_size)) / 2
                peaks[precision].append(peak)
                rate = w["images"] / w["seconds"]
                achieved = rate * gen_flops / 1e9
                ref = REFERENCE_GENERATE.get(graph.stem)
                result["generation"][(graph.stem, batch, precision)] = (rate, w["rss_peak_mib"])
                gen_rows.append(f"| {graph.stem} | {batch} | {precision} | {images} | {rate:.0f} | "
                                f"{f'{rate / ref:.2f}x' if ref else 'n/a'} | {achieved:.1f} | {peak:.0f} | "
                                f"{achieved / peak:.1%} | {w['rss_model_mib']:.0f} | {w['rss_peak_mib']:.0f} |")
                print(gen_rows[-1], flush=True)
    meta = run_metadata("cpu", wall_seconds=round(time.perf_counter() - start, 1))
    env = ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY"))
    peak_line = "; ".join(f"{p} {min(v):.0f}-{max(v):.0f} (median {statistics.median(v):.0f})"
                          for p, v in peaks.items() if v)
    section = [
        f"\n## MNIST CGN throughput: training and generation, {meta['time'][:10]}\n",
        (f"- date {meta['time']}; commit {meta['commit']}; torch {meta['torch']}, Python {meta['python']}; "
        f"{meta['cpu']}, {os.cpu_count()} cores, {meta['machine']}; {env}; device cpu"),
        (f"- command: `python {meta['command']}`; wall {meta['wall_seconds']} s; 1-min load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (2-core machine shared with other workers: "
        "absolute numbers are low and noisy, the matmul column is measured right around each row)"),
        "- weights: randomly initialised (the graphs' seeded init); speed and memory do not depend on them",
        (f"- training: `Trainer.train_step` on the real training set, {args.warmup} warm-up + {args.steps} timed "
        "steps; vs reference = images/s over the reference code's 135.6 (double-colored) / 40.1 (Wildlife) "
        "images/s at batch 16 without its VGG loss (CGN_FACTS.md section 7; target >= 3x)"),
        ("- generation: `generate_dataset` to uint8 safetensors, per_shape 10, one fresh process per row; vs "
        "reference = over ~510 images/s at batch 100 (target >= 3x); RSS = the process's peak resident set (VmHWM) after "
        "imports and building the model, and at the end (target: peak < 1024 MiB)"),
        ("- GFLOP/s = images/s x FLOPs per image (FlopCounterMode; matmuls and convolutions); matmul = "
        f"{args.matmul_size}x{args.matmul_size} GFLOP/s of the row's precision, mean of one measurement before and one after the row; "
        f"over the run: {peak_line}"),
        *flops_lines, "",
        "| graph | batch | precision | train images/s | vs reference | GFLOP/s | matmul GFLOP/s | fraction |",
        "|---|---:|---|---:|---:|---:|---:|---:|", *train_rows, "",
        ("| graph | batch | precision | images | generate images/s | vs reference | GFLOP/s | matmul GFLOP/s | "
        "fraction | RSS model MiB | RSS peak MiB |"),
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|", *gen_rows, ""]
    text = "\n".join(section)
    publish(text, args.out)
    return result


if __name__ == "__main__":
    main()
