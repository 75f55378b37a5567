"""What every benchmark script does with its result: append the section to
benchmarks/RESULTS.md (or not, with --out -) and print it."""
from __future__ import annotations

from pathlib import Path


def publish(text: str, out: str | Path) -> None:
    if str(out) != "-":
        with open(out, "a") as f:
            f.write(text)
    print(text)
