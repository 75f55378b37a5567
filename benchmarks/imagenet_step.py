"""Throughput and peak memory of one full-size CGN-ImageNet training step.

Builds graphs/cgn_imagenet.yaml as `scmgen --random-init train` would (four BigGAN-deep-256
generators, U^2-Net, LPIPS-VGG16; random weights, which run exactly as fast as pretrained ones),
with train.accumulate=1 so that one `Trainer.train_step()` is one forward and backward pass of
one batch plus the optimiser steps, and times it for every combination of batch size, precision
and BigGAN gradient checkpointing. Each combination runs in a fresh subprocess (`--one`), because
the CPU peak (VmHWM, the process's high-water resident set) only ever grows and CUDA's allocator
keeps what it has cached. Appends a Markdown section to --out and prints the table.

    python benchmarks/imagenet_step.py --device cpu --batch-sizes 1 --precisions fp32,bf16 \\
        --checkpointing off,on --steps 2 --warmup 1

Images/s is batch * steps / (time of the timed steps); the warm-up steps are not timed. The
ratios are to the first combination measured in the same run (the baseline).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GRAPH = ROOT / "graphs" / "cgn_imagenet.yaml"
RESULT_TAG = "RESULT "  # the line a --one child prints its measurement on
OOM = "OOM"
HEADER = "# Benchmark results\n"


@dataclass(frozen=True)
class Combo:
    batch_size: int
    precision: str  # fp32 | bf16
    checkpointing: bool

    def flags(self) -> list[str]:
        return ["--batch-sizes", str(self.batch_size), "--precisions", self.precision,
                "--checkpointing", "on" if self.checkpointing else "off"]


# -- one combination (runs in the child process) ---------------------------------------------------
def peak_rss_bytes() -> int:
    """This process's peak resident set size (VmHWM): process-wide and never decreasing."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")


def biggan_nodes(raw: dict[str, Any]) -> list[str]:
    return [name for name, node in raw["nodes"].items()
            if isinstance(node, dict) and node.get("plugin") == "imagenet.biggan"]


def overrides(raw: dict[str, Any], combo: Combo, device: str) -> list[str]:
    """--set overrides: the batch, one image pass per optimiser step, a step count that never
    ends the run, no checkpoint files, and checkpointing in every BigGAN (the frozen teacher
    runs in eval mode, where it changes nothing)."""
    sets = [f"train.batch_size={combo.batch_size}", "train.accumulate=1", "train.steps=1000000000",
            f"train.precision={combo.precision}", f"train.device={device}", "train.checkpoint_every=0"]
    flag = "true" if combo.checkpointing else "false"
    return sets + [f"nodes.{name}.params.checkpointing={flag}" for name in biggan_nodes(raw)]


def measure_here(combo: Combo, device: str, steps: int, warmup: int) -> dict[str, Any]:
    """Build the model, run `warmup` untimed and `steps` timed training steps in this process."""
    import torch

    from scmgen import weights
    from scmgen.model import SCM
    from scmgen.spec import read_yaml
    from scmgen.trainer import Trainer

    weights.set_random_init(True)
    cuda = device.startswith("cuda")
    started = time.perf_counter()
    try:
        model = SCM.from_yaml(GRAPH, overrides(read_yaml(GRAPH), combo, device))
        with tempfile.TemporaryDirectory() as out:  # the trainer writes nothing here without checkpoints
            trainer = Trainer(model, None, out, device=device, progress=False, tensorboard=False)
            build_s = time.perf_counter() - started
            for _ in range(warmup):
                trainer.train_step()
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(steps):
                losses = trainer.train_step()
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
    except torch.OutOfMemoryError:
        return {"oom": True}
    except RuntimeError as e:  # the CPU allocator's out-of-memory error is a plain RuntimeError
        if "can't allocate memory" in str(e):
            return {"oom": True}
        raise
    peak = torch.cuda.max_memory_allocated() if cuda else peak_rss_bytes()
    return {"oom": False, "images_per_s": combo.batch_size * steps / seconds, "step_s": seconds / steps,
            "peak_bytes": peak, "build_s": build_s, "losses_finite": all(math.isfinite(v) for v in losses.values()),
            "device_name": torch.cuda.get_device_name() if cuda else "cpu",
            "threads": torch.get_num_threads()}


# -- the driver (parent process) ---------------------------------------------------------------
def measure(combo: Combo, device: str, steps: int, warmup: int) -> dict[str, Any]:
    """Measure one combination in a fresh `--one` subprocess. A child killed by the kernel's
    out-of-memory killer (SIGKILL) counts as OOM too; any other failure is reported as an error."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", "--device", device, *combo.flags(),
           "--steps", str(steps), "--warmup", str(warmup)]
    started = time.perf_counter()
    proc = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return {**json.loads(line[len(RESULT_TAG):]), "wall_s": wall}
    if proc.returncode == -9:
        return {"oom": True, "wall_s": wall, "note": "killed (SIGKILL), presumably by the OOM killer"}
    lines = proc.stderr.strip().splitlines() or ["no output"]
    ours = [line.strip() for line in lines if line.strip().startswith(f'File "{ROOT}') and "/.venv/" not in line]
    where = f" (last frame in this repository: {ours[-1]})" if ours else ""
    return {"oom": False, "error": f"exit {proc.returncode}: {lines[-1].strip()}{where}", "wall_s": wall}


def fmt_ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}x" if value is not None and base else "n/a"


def table(rows: list[tuple[Combo, dict[str, Any]]], device: str) -> str:
    memory = "peak GPU memory allocated (GiB)" if device.startswith("cuda") else "peak RSS (GiB)"
    head = f"| batch | precision | checkpointing | images/s | s/step | {memory} | speed vs baseline | memory vs baseline |"
    lines = [head, "|---:|---|---|---:|---:|---:|---:|---:|"]
    base = rows[0][1] if rows else {}
    for combo, r in rows:
        row = f"| {combo.batch_size} | {combo.precision} | {'on' if combo.checkpointing else 'off'} |"
        if r.get("oom") or "error" in r:
            what = OOM if r.get("oom") else "error"
            lines.append(f"{row} {what} | {what} | {what} | n/a | n/a |")
            continue
        lines.append(f"{row} {r['images_per_s']:.3f} | {r['step_s']:.2f} | {r['peak_bytes'] / 2**30:.2f} | "
                     f"{fmt_ratio(r['images_per_s'], base.get('images_per_s'))} | "
                     f"{fmt_ratio(r['peak_bytes'], base.get('peak_bytes'))} |")
    return "\n".join(lines)


def section(rows: list[tuple[Combo, dict[str, Any]]], args: argparse.Namespace, total_s: float) -> str:
    from scmgen.provenance import run_metadata

    meta = run_metadata(args.device)
    names = sorted({r["device_name"] for _, r in rows if "device_name" in r})
    threads = sorted({r["threads"] for _, r in rows if "threads" in r})
    command = "python " + shlex.join([str(Path(sys.argv[0])), *sys.argv[1:]])
    notes = [f"- date: {meta['time']}", f"- commit: {meta['commit']}",
             f"- torch {meta['torch']}, Python {meta['python']}, machine: {meta['machine'].split(',')[0]}",
             f"- device: {args.device}" + (f" ({', '.join(names)})" if args.device.startswith("cuda") and names else "")
             + (f"; torch threads: {', '.join(map(str, threads))}" if threads else ""),
             f"- command: `{command}`",
             (f"- graph: graphs/cgn_imagenet.yaml with train.accumulate=1 (one batch per optimiser step); "
              f"{args.warmup} warm-up step(s), then {args.steps} timed step(s) per combination, each combination "
              f"in a fresh process; whole run {total_s / 60:.1f} min"),
             ("- weights: random (`--random-init` semantics: BigGAN-deep-256, U^2-Net and the LPIPS VGG16 trunk "
              "randomly initialised); random init does not change speed or memory, only the images"),
             "- images/s = batch x timed steps / their time; peak memory: " +
             ("torch.cuda.max_memory_allocated" if args.device.startswith("cuda") else
              "the process's VmHWM (peak resident set, includes building the model)") +
             "; baseline = the first row"]
    errors = [f"- {c.batch_size}/{c.precision}/{'on' if c.checkpointing else 'off'}: {r.get('error') or r.get('note')}"
              for c, r in rows if "error" in r or "note" in r]
    if args.note:
        notes.append(f"- note: {args.note}")
    body = "\n".join(notes + errors)
    return f"\n## CGN-ImageNet training step ({args.device}), {meta['time'][:10]}\n\n{body}\n\n{table(rows, args.device)}\n"


def append_section(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or not path.read_text().strip():
        path.write_text(HEADER)
    with path.open("a") as f:
        f.write(text)


def parse_list(value: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if allowed is not None and v not in allowed]
    if not items or bad:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(allowed or ('values',))}, "
                                         f"got {value!r}")
    return items


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    p.add_argument("--batch-sizes", default="1,2,4,8", type=lambda v: [int(x) for x in parse_list(v)])
    p.add_argument("--precisions", default="fp32,bf16", type=lambda v: parse_list(v, ("fp32", "bf16")))
    p.add_argument("--checkpointing", default="off,on", type=lambda v: [x == "on" for x in parse_list(v, ("off", "on"))])
    p.add_argument("--steps", type=int, default=3, help="timed steps per combination")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    p.add_argument("--note", default="", help="a line to add to the section (e.g. how loaded the machine was)")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: measure one combination here
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or any(b < 1 for b in args.batch_sizes):
        p.error("--steps and batch sizes must be at least 1, --warmup at least 0")
    if not (args.device == "cpu" or args.device.startswith("cuda")):
        p.error(f"--device must be cpu or cuda, got {args.device!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    combos = [Combo(b, p, c) for b, p, c in itertools.product(args.batch_sizes, args.precisions, args.checkpointing)]
    if args.one:
        if len(combos) != 1:
            raise SystemExit("--one measures exactly one combination")
        result = measure_here(combos[0], args.device, args.steps, args.warmup)
        print(RESULT_TAG + json.dumps(result), flush=True)
        return 0
    started = time.perf_counter()
    rows: list[tuple[Combo, dict[str, Any]]] = []
    for combo in combos:
        print(f"measuring batch {combo.batch_size}, {combo.precision}, checkpointing "
              f"{'on' if combo.checkpointing else 'off'} ...", flush=True)
        result = measure(combo, args.device, args.steps, args.warmup)
        rows.append((combo, result))
        print(f"  {json.dumps(result)}", flush=True)
    text = section(rows, args, time.perf_counter() - started)
    append_section(args.out, text)
    print(text)
    print(f"appended to {args.out}")
    return 1 if any("error" in r for _, r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
