"""`scmgen weights list / fetch / verify` against a temporary cache, with the network mocked."""
from __future__ import annotations

import hashlib
import urllib.error
from pathlib import Path
from typing import BinaryIO

import pytest
import torch
import torchvision
from click.testing import CliRunner, Result

from scmgen import weights, weights_cli
from scmgen.cli import cli
from tests.test_biggan import perturbed_tiny, write_official_layout

FILES = {"a.bin": b"first file", "b.bin": b"second file"}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # small models: see test_biggan


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "weights"))
    return tmp_path / "weights"


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> weights.WeightsEntry:
    """An entry of two files, one with a known sha256, of a kind nothing verifies."""
    entry = weights.WeightsEntry("toy", "test files", {
        "a.bin": ("https://example.invalid/a.bin", hashlib.sha256(FILES["a.bin"]).hexdigest()),
        "b.bin": ("https://example.invalid/b.bin", None)}, kind="toy")
    monkeypatch.setitem(weights.ENTRIES, "toy", entry)
    return entry


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Serve FILES by the URL's last part instead of the network; returns the URLs asked for."""
    asked: list[str] = []

    def fake(url: str, out: BinaryIO, report: weights_cli.Report) -> None:
        asked.append(url)
        data = FILES[url.rsplit("/", 1)[1]]
        report(0, len(data))
        out.write(data)
        report(len(data), len(data))

    monkeypatch.setattr(weights_cli, "download", fake)
    return asked


def run(*args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(cli, ["weights", *args])
    assert result.exit_code == code, (result.output, result.exception)
    if code:
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    return result


def test_list_shows_every_entry_with_status_size_and_folder(cache: Path, toy: weights.WeightsEntry) -> None:
    (cache / "toy").mkdir(parents=True)
    (cache / "toy" / "a.bin").write_bytes(b"x" * 2048)
    lines = {line.split()[0]: line for line in run("list").stdout.splitlines()[1:]}
    assert {"biggan-deep-128", "biggan-deep-256", "biggan-deep-512", "vgg16", "resnet50", "toy"} <= set(lines)
    assert "partial (1/2 files)" in lines["toy"] and "2.0 KiB" in lines["toy"] and str(cache / "toy") in lines["toy"]
    assert "missing" in lines["biggan-deep-256"] and str(cache / "biggan-deep-256") in lines["biggan-deep-256"]


def test_fetch_downloads_checks_and_renames(cache: Path, toy: weights.WeightsEntry, downloads: list[str]) -> None:
    assert "fetched: toy" in run("fetch", "toy").stdout
    assert {p.name: p.read_bytes() for p in (cache / "toy").iterdir()} == FILES  # no temporary files left
    assert weights.present("toy") and len(downloads) == 2
    assert "already present: toy" in run("fetch", "toy").stdout and len(downloads) == 2


def test_fetch_rejects_a_wrong_sha256(cache: Path, toy: weights.WeightsEntry, downloads: list[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(FILES, "a.bin", b"tampered")
    result = run("fetch", "toy", code=1)
    assert "toy/a.bin has sha256" in result.stderr and "not kept" in result.stderr
    assert list((cache / "toy").iterdir()) == []


def test_fetch_offline_says_where_to_put_the_files(cache: Path, toy: weights.WeightsEntry,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, out: BinaryIO, report: weights_cli.Report) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(weights_cli, "download", offline)
    message = run("fetch", "toy", code=1).stderr
    assert "name resolution" in message and str(cache / "toy") in message
    assert "a.bin (https://example.invalid/a.bin)" in message and "b.bin" in message


def test_fetch_unknown_name_lists_the_known_ones(cache: Path, downloads: list[str]) -> None:
    message = run("fetch", "biggan-deep-1024", code=2).stderr
    assert "unknown weights 'biggan-deep-1024'" in message and "biggan-deep-256" in message and "vgg16" in message
    assert downloads == []


def test_verify_accepts_a_good_biggan_and_names_a_bad_key(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(weights.ENTRIES, "biggan-tiny", weights.WeightsEntry(
        "biggan-tiny", "test model", {"config.json": ("", None), "pytorch_model.bin": ("", None)}, kind="biggan"))
    write_official_layout(cache / "biggan-tiny", perturbed_tiny())
    assert "ok: biggan-tiny" in run("verify").stdout
    state = torch.load(cache / "biggan-tiny" / "pytorch_model.bin", weights_only=True)
    del state["embeddings.weight"]
    torch.save(state, cache / "biggan-tiny" / "pytorch_model.bin")
    result = run("verify", "biggan-tiny", code=1)
    assert "bad: biggan-tiny" in result.stdout and "missing key 'embeddings.weight'" in result.stdout


def test_verify_checks_torchvision_files_and_reports_the_rest(cache: Path, toy: weights.WeightsEntry,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(weights.ENTRIES, "squeezenet1_1", weights.WeightsEntry(
        "squeezenet1_1", "test model", {"squeezenet.pth": ("", None)}, kind="torchvision"))
    (cache / "squeezenet1_1").mkdir(parents=True)
    torch.save(torchvision.models.squeezenet1_1().state_dict(), cache / "squeezenet1_1" / "squeezenet.pth")
    (cache / "toy").mkdir()
    for name, data in FILES.items():
        (cache / "toy" / name).write_bytes(data)
    out = run("verify", "squeezenet1_1", "toy").stdout
    assert "ok: squeezenet1_1" in out and "unchecked: toy (no verifier for kind 'toy')" in out
    torch.save({"features.0.weight": torch.zeros(1)}, cache / "squeezenet1_1" / "squeezenet.pth")
    assert "'features.0.weight' has shape (1,)" in run("verify", "squeezenet1_1", code=1).stdout


def test_verify_fails_for_a_named_missing_entry_only(cache: Path) -> None:
    assert "missing: biggan-deep-256" in run("verify").stdout
    assert "missing: biggan-deep-256 (scmgen weights fetch biggan-deep-256)" in run("verify", "biggan-deep-256",
                                                                                    code=1).stdout
