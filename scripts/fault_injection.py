"""Kill `scmgen train` and `scmgen generate` with SIGKILL at random moments, resume each time, and
check that the end result is bit-for-bit what an uninterrupted run gives.

    python scripts/fault_injection.py --kills 10 --out results/fault_injection

Writes `report.json` (kills survived, resumes identical, bytes compared, command, commit, seed,
wall time) in --out and exits non-zero if any check fails.
"""
from __future__ import annotations

import argparse
import filecmp
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scmgen.provenance import run_metadata  # noqa: E402

GRAPH = ROOT / "graphs" / "tiny_shapes.yaml"
SCMGEN = [sys.executable, "-m", "scmgen"]
PART_SIZE = 250  # images per part of the generated set: the unit a killed generation resumes from


def train_cmd(out: Path, steps: int, resume: bool) -> list[str]:
    return [*SCMGEN, "train", str(GRAPH), "--out", str(out), "--quiet", "--set", f"train.steps={steps}",
            "--set", "train.checkpoint_every=20", "--set", "train.keep_checkpoints=2", "--set", "data.params.n=512",
            *(["--resume"] if resume else [])]


def generate_cmd(model: Path, out: Path, n: int) -> list[str]:
    return [*SCMGEN, "generate", str(model), "--n", str(n), "--per-shape", "5", "--out", str(out),
            "--batch-size", "50", "--format", "png", "--part-size", str(PART_SIZE)]


def run_with_kills(make_cmd: Callable[[], list[str]], progress: Callable[[], float], done: Callable[[], bool],
                   kills: int, rng: random.Random) -> tuple[int, list[str]]:
    """Start the command and SIGKILL it at a random point of the work it has left, `kills` times,
    then let it finish. The point is drawn in progress (checkpoint steps, finished parts), not in
    seconds, so a loaded machine does not make kills miss; one kill in five lands during start-up.
    Returns the kills that landed and the problems seen."""
    landed, problems = 0, []
    # kill points spread over the whole run, in order; one in five at 0 = during start-up
    targets = sorted(0.0 if rng.random() < 0.2 else rng.uniform(0.0, 0.9) for _ in range(kills))
    while not done():
        proc = subprocess.Popen(make_cmd(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        if landed < kills:
            target = targets[landed]
            while proc.poll() is None and progress() <= target:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.3))  # somewhere between two checkpoints or parts
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                landed += 1
                continue
        output = proc.communicate()[0]
        if proc.returncode != 0:
            problems.append(f"exit {proc.returncode}: {output.strip().splitlines()[-1:]}")
            break
    return landed, problems


def compare(a: Path, b: Path, skip: tuple[str, ...]) -> tuple[bool, int]:
    """Whether two trees hold the same files byte for byte (but `skip`), and the bytes compared."""
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name not in skip)
    other = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name not in skip)
    same = files == other and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files)
    return same, sum((a / f).stat().st_size for f in files)


def latest_step(out: Path) -> int:
    latest = out / "checkpoints" / "latest"
    return int(latest.read_text().strip().split("_")[1]) if latest.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/fault_injection"))
    parser.add_argument("--keep", action="store_true", help="keep the runs, not only report.json")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    start = time.perf_counter()
    for old in ("train_reference", "train_killed", "generate_reference", "generate_killed", ".generate_killed.partial"):
        shutil.rmtree(args.out / old, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)

    # training: uninterrupted reference, then a run killed `kills` times
    ref = args.out / "train_reference"
    subprocess.run(train_cmd(ref, args.steps, False), check=True, capture_output=True)
    killed = args.out / "train_killed"
    steps_seen: list[int] = []

    def train_next() -> list[str]:
        steps_seen.append(latest_step(killed))
        return train_cmd(killed, args.steps, (killed / "checkpoints" / "latest").exists())

    train_kills, problems = run_with_kills(train_next, lambda: latest_step(killed) / args.steps,
                                           lambda: (killed / "model").exists(), args.kills, rng)
    monotonic = all(a <= b for a, b in zip(steps_seen, steps_seen[1:]))
    train_same, train_bytes = compare(ref / "model", killed / "model", skip=("meta.json",))

    # generation: uninterrupted reference, then a run killed `kills` times
    gen_ref, gen_killed = args.out / "generate_reference", args.out / "generate_killed"
    subprocess.run(generate_cmd(ref / "model", gen_ref, args.images), check=True, capture_output=True)
    partial = gen_killed.parent / f".{gen_killed.name}.partial"
    parts = -(-args.images // PART_SIZE)
    gen_kills, gen_problems = run_with_kills(lambda: generate_cmd(ref / "model", gen_killed, args.images),
                                             lambda: len(list(partial.glob("parts/part_*.csv"))) / parts,
                                             gen_killed.exists, args.kills, rng)
    gen_same, gen_bytes = compare(gen_ref, gen_killed, skip=("meta.json",))

    report = {
        "kills_requested": args.kills,
        "train": {"kills_landed": train_kills, "identical": train_same, "bytes_compared": train_bytes,
                  "checkpoint_steps_seen": steps_seen, "no_step_lost": monotonic, "problems": problems},
        "generate": {"kills_landed": gen_kills, "identical": gen_same, "bytes_compared": gen_bytes,
                     "problems": gen_problems},
        **run_metadata("cpu", seed=args.seed, wall_seconds=round(time.perf_counter() - start, 1)),
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    if not args.keep:
        for run in (ref, killed, gen_ref, gen_killed):
            shutil.rmtree(run, ignore_errors=True)
    ok = train_same and gen_same and monotonic
    print(f"train: {train_kills} kills, identical={train_same} ({train_bytes} bytes); "
          f"generate: {gen_kills} kills, identical={gen_same} ({gen_bytes} bytes); report: {args.out / 'report.json'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
