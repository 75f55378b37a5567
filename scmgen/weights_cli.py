"""`scmgen weights`: list, fetch and verify the pretrained files in the weights cache.

Entries are declared by the plugin modules that use them (`scmgen.weights.add_entry`), so the
commands first import every registered plugin. Downloads land atomically (a temporary file in
the entry's folder, renamed once complete and checked), so an interrupted fetch never leaves a
file that looks present. Verification loads each file the way the code will and compares keys
and shapes; the check for an entry is looked up by its kind in `VERIFIERS`.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO, Callable

import click

from scmgen import registry, weights
from scmgen.errors import ScmgenError, UsageError

Report = Callable[[int, int | None], None]  # (bytes done, total bytes or None)


def verify_biggan(folder: Path) -> None:
    """config.json builds a BigGAN (the official one, for an official name) whose state dict the
    checkpoint matches key for key and shape for shape."""
    from mechanisms.imagenet.biggan import load_biggan

    load_biggan(folder, folder.name)


def verify_torchvision(folder: Path) -> None:
    """The checkpoint fits torchvision's architecture of the entry's name (vgg16, resnet50);
    the model is built on the meta device, so checking allocates no weights of its own."""
    import torch
    import torchvision

    from mechanisms.imagenet.biggan import check_state_dict, read_state_dict

    (file,) = weights.ENTRIES[folder.name].files
    with torch.device("meta"):
        model = getattr(torchvision.models, folder.name)()
    check_state_dict(model.state_dict(), read_state_dict(folder / file), str(folder / file))


# entry kind -> check of an entry's folder; raises ValueError (or OSError) when the files are bad
VERIFIERS: dict[str, Callable[[Path], None]] = {"biggan": verify_biggan, "torchvision": verify_torchvision}


def known_entries() -> dict[str, weights.WeightsEntry]:
    """Every declared entry: importing each registered plugin runs its `add_entry` calls. A plugin
    that fails to import is reported and skipped, so one broken plugin does not hide the rest."""
    for kind in registry.KINDS:
        for name in registry.names(kind):
            try:
                registry.get(kind, name)
            except Exception as e:  # noqa: BLE001 - any import failure of third-party code
                click.echo(f"warning: {registry.SINGULAR[kind]} plugin '{name}' failed to load ({type(e).__name__}: "
                           f"{e}); weights it declares are not listed", err=True)
    return dict(sorted(weights.ENTRIES.items()))


def _entries(names: tuple[str, ...]) -> list[weights.WeightsEntry]:
    known = known_entries()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"unknown weights '{unknown[0]}', known: {', '.join(known)}")
    return [known[n] for n in names] if names else list(known.values())


def _size(n: int) -> str:
    units, size, i = ("B", "KiB", "MiB", "GiB"), float(n), 0
    while size >= 1024 and i < len(units) - 1:
        size, i = size / 1024, i + 1
    return f"{size:.1f} {units[i]}" if i else f"{n} B"


def download(url: str, out: BinaryIO, report: Report) -> None:
    """Stream `url` into `out`. A web page instead of a file (a login or confirmation page, as
    Google Drive serves for large files) is an error, not a checkpoint."""
    request = urllib.request.Request(url, headers={"User-Agent": "scmgen"})
    with urllib.request.urlopen(request, timeout=60) as response:
        if response.headers.get_content_type() == "text/html":
            raise OSError("the server sent a web page instead of the file")
        total = int(response.headers.get("Content-Length") or 0) or None
        done = 0
        report(done, total)
        while chunk := response.read(1 << 20):
            out.write(chunk)
            done += len(chunk)
            report(done, total)


class _Hashing:
    """A binary file that also feeds what is written to sha256."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.sha256 = f, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        return self.f.write(data)


def fetch_file(name: str, file: str, url: str, sha256: str | None, folder: Path, report: Report) -> None:
    """Download one file of entry `name` into `folder` atomically. `sha256` may be the full
    digest or its first hex digits (torch.hub's file-name convention)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{file}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            writer = _Hashing(f)
            download(url, writer, report)  # type: ignore[arg-type]
        digest = writer.sha256.hexdigest()
        if sha256 and not digest.startswith(sha256.lower()):
            raise ScmgenError(f"downloaded {name}/{file} has sha256 {digest}, expected {sha256}...: not kept")
        os.replace(tmp, folder / file)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@click.group("weights")
def weights_group() -> None:
    """Pretrained weights in the cache ($SCMGEN_WEIGHTS, default ~/.cache/scmgen/weights).

    \b
    Examples:
      scmgen weights list
      scmgen weights fetch biggan-deep-256 u2net
      scmgen weights verify
    """


@weights_group.command("list")
def list_weights() -> None:
    """Every known entry, present or missing, with its size and folder."""
    click.echo(f"cache: {weights.cache_dir()}")
    for entry in _entries(()):
        folder = weights.entry_dir(entry.name)
        have = [folder / f for f in entry.files if (folder / f).is_file()]
        status = "present" if len(have) == len(entry.files) else \
            f"partial ({len(have)}/{len(entry.files)} files)" if have else "missing"
        size = _size(sum(p.stat().st_size for p in have)) if have else "-"
        click.echo(f"{entry.name:<16} {entry.kind:<12} {status:<8} {size:>10}  {folder}")


@weights_group.command()
@click.argument("names", nargs=-1, required=True)
def fetch(names: tuple[str, ...]) -> None:
    """Download the files of NAMES into the cache (files already there are kept).

    \b
    Example: scmgen weights fetch biggan-deep-256 u2net
    """
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    console = Console(stderr=True)
    for entry in _entries(names):
        folder = weights.entry_dir(entry.name)
        todo = {f: src for f, src in entry.files.items() if not (folder / f).is_file()}
        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      TimeRemainingColumn(), console=console, transient=True, disable=not console.is_terminal) as bar:
            for file, (url, sha256) in todo.items():
                task = bar.add_task(f"{entry.name}/{file}", total=None)
                try:
                    fetch_file(entry.name, file, url, sha256, folder,
                               lambda done, total: bar.update(task, completed=done, total=total))
                except (OSError, http.client.HTTPException) as e:
                    reason = e.reason if isinstance(e, urllib.error.URLError) else e
                    by_hand = ", ".join(f"{f} ({u})" for f, (u, _) in todo.items() if not (folder / f).is_file())
                    raise ScmgenError(f"cannot download {entry.name} ({reason}): put {by_hand} in {folder} "
                                      "by hand") from None
        click.echo(f"{'fetched' if todo else 'already present'}: {entry.name} in {folder}")


@weights_group.command()
@click.argument("names", nargs=-1)
def verify(names: tuple[str, ...]) -> None:
    """Load each present entry (or NAMES) and check its keys and shapes against what the code
    builds. Exit code 1 if any is bad, or if a named one is missing.

    \b
    Example: scmgen weights verify biggan-deep-256
    """
    failed = 0
    for entry in _entries(names):
        folder = weights.entry_dir(entry.name)
        check = VERIFIERS.get(entry.kind)
        if not weights.present(entry.name):
            failed += bool(names)
            click.echo(f"missing: {entry.name} (scmgen weights fetch {entry.name})")
        elif check is None:
            click.echo(f"unchecked: {entry.name} (no verifier for kind '{entry.kind}')")
        else:
            try:
                check(folder)
                click.echo(f"ok: {entry.name}")
            except (ValueError, OSError) as e:
                failed += 1
                click.echo(f"bad: {entry.name}: {e}")
    if failed:
        raise ScmgenError(f"{failed} weights entr{'y' if failed == 1 else 'ies'} failed verification")
