"""What every benchmark script does with its result: name the CPU, append the section to
benchmarks/RESULTS.md (or not, with --out -) and print it."""
from __future__ import annotations

from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def publish(text: str, out: str | Path) -> None:
    if str(out) != "-":
        with open(out, "a") as f:
            f.write(text)
    print(text)
