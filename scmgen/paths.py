"""Paths read from files (graph YAML, label CSVs) stay inside the folder they belong to, so a
shared graph or data set cannot point scmgen at files elsewhere on the machine."""
from __future__ import annotations

from pathlib import Path

from scmgen.errors import SpecError


def inside(root: str | Path, relative: str, source: str, field: str) -> Path:
    """`root / relative`, resolved (links and `..` followed), refused unless it stays in `root`."""
    if Path(relative).is_absolute():
        raise SpecError(source, field, f"'{relative}' is an absolute path, expected a path inside {root}")
    base = Path(root).resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise SpecError(source, field, f"'{relative}' leads outside {base}, expected a path inside it")
    return target
