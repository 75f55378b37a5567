"""Writing and reading checkpoint directories safely.

A directory is built under a temporary name, every file is fsynced, and only then is it renamed
into place, so a killed process leaves either the old complete directory or the new complete one.
Reading uses safetensors or `torch.load(weights_only=True)`: a checkpoint can never run code.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from scmgen.errors import ScmgenError, SpecError


def fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(path)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_writable_parent(target: Path) -> None:
    """Fail early, with one line, when `target` cannot become a directory."""
    if target.exists() and not target.is_dir():
        raise ScmgenError(f"{target}: exists and is a file, expected a directory (or a new path)")
    parent = target.parent
    for p in [parent, *parent.parents]:
        if p.exists():
            if not p.is_dir():
                raise ScmgenError(f"{target}: {p} is a file, expected a directory")
            if not os.access(p, os.W_OK):
                raise ScmgenError(f"{target}: {p} is not writable")
            break


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces `target` only if the block succeeds."""
    target = Path(target)
    check_writable_parent(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        fsync_dir(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace a small file in one rename (used for the `latest` pointer)."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fsync_dir(path.parent)


def save_module(module: nn.Module, path: Path) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, str(path))


def load_module(module: nn.Module, path: Path, source: str) -> None:
    """Load safetensors weights strictly; every mismatch is a one-line error naming the key."""
    if not path.exists():
        raise SpecError(source, path.name, "missing weights file")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise SpecError(source, path.name, f"unreadable or truncated safetensors file ({e})") from None
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        what = f"missing keys {missing[:3]}" if missing else f"unexpected keys {unexpected[:3]}"
        raise SpecError(source, path.name, f"weights do not fit this mechanism: {what}")
    for key, value in own.items():
        if tuple(value.shape) != tuple(state[key].shape):
            raise SpecError(source, f"{path.name}:{key}",
                            f"shape {tuple(state[key].shape)}, expected {tuple(value.shape)}")
    module.load_state_dict(state, strict=True)


def safe_torch_load(path: Path, source: str) -> Any:
    """`torch.load` that refuses pickles which would import or run code."""
    if not path.exists():
        raise SpecError(source, path.name, "missing file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "not a weights-only pickle"
        raise SpecError(source, path.name, f"refused to load: the file wants to run code or is corrupt ({first[:120]})") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise SpecError(source, path.name, f"unreadable or truncated file ({str(e).splitlines()[0][:120]})") from None


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path, source: str) -> dict[str, Any]:
    if not path.exists():
        raise SpecError(source, path.name, "missing file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpecError(source, path.name, f"invalid JSON ({e})") from None
    if not isinstance(data, dict):
        raise SpecError(source, path.name, "expected a JSON object")
    return data
