"""Pretrained weights: one cache directory, named entries, and the `--random-init` escape hatch.

Mechanisms ask `require(name)` for the files of a named entry (e.g. 'biggan-deep-256', 'u2net').
When the files are in the cache they get the path; when they are missing they get a one-line
error that says how to fetch them or where to put them by hand, unless random initialisation
was requested (`--random-init`), in which case they get None, initialise randomly, and the name
is recorded so every output made that way says so.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from scmgen.errors import ScmgenError

CACHE_ENV = "SCMGEN_WEIGHTS"


class MissingWeights(ScmgenError):
    """Pretrained weights a graph needs are not in the cache (bad input: exit code 2)."""

    exit_code = 2


@dataclass(frozen=True)
class WeightsEntry:
    """A named set of pretrained files: where they come from and how to check them."""

    name: str
    description: str
    files: dict[str, tuple[str, str | None]]  # file name in the entry's folder -> (url, sha256 or None)
    kind: str  # "biggan" | "u2net" | "torchvision" | ...


ENTRIES: dict[str, WeightsEntry] = {}
_state: dict[str, object] = {"random_init": False, "used_random": set()}


def add_entry(entry: WeightsEntry) -> WeightsEntry:
    ENTRIES[entry.name] = entry
    return entry


def cache_dir() -> Path:
    """$SCMGEN_WEIGHTS, or ~/.cache/scmgen/weights."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "scmgen" / "weights")


def entry_dir(name: str) -> Path:
    return cache_dir() / name


def set_random_init(flag: bool) -> None:
    _state["random_init"] = flag


def random_init_requested() -> bool:
    return bool(_state["random_init"])


def used_random_init() -> list[str]:
    """Names of the weights that were replaced by random initialisation in this process."""
    return sorted(_state["used_random"])  # type: ignore[arg-type]


def note_random_init(name: str) -> None:
    """Record that weights `name` were replaced by random ones without going through `require`
    (e.g. a loss backbone that falls back to random), so outputs still say so."""
    _state["used_random"].add(name)  # type: ignore[union-attr]


def present(name: str) -> bool:
    entry = ENTRIES.get(name)
    folder = entry_dir(name)
    if entry is None:
        return folder.exists()
    return all((folder / f).is_file() for f in entry.files)


def require(name: str) -> Path | None:
    """The folder holding entry `name`, or None under --random-init; else `MissingWeights`."""
    if present(name):
        return entry_dir(name)
    if random_init_requested():
        _state["used_random"].add(name)  # type: ignore[union-attr]
        return None
    files = ", ".join(ENTRIES[name].files) if name in ENTRIES else "its files"
    raise MissingWeights(f"pretrained weights '{name}' not found in {entry_dir(name)}: run `scmgen weights fetch {name}`, "
                         f"or put {files} there by hand, or pass --random-init to run with random weights")
