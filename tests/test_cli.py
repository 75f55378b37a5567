"""End to end through the command line on the tiny graph: train, resume, sample, intervene,
generate, draw. Also the CLI's one-line errors for runtime and usage problems."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file

from scmgen.cli import cli
from scmgen.provenance import cpu_model
from tests.conftest import TINY


def run(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    if code:
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    return result.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    run("train", TINY, "--out", out, "--quiet", "--set", "train.steps=6", "--set", "train.sample_every=3",
        "--set", "train.checkpoint_every=3")
    return out


def test_train_writes_model_grid_samples_and_logs(trained: Path) -> None:
    assert sorted(p.name for p in (trained / "model").iterdir()) == [
        "backdrop.safetensors", "foreground.safetensors", "graph.yaml", "mask.safetensors", "meta.json"]
    meta = json.loads((trained / "model" / "meta.json").read_text())
    assert meta["step"] == 6 and meta["seed"] == 0 and meta["train_seconds"] > 0
    assert meta["cpu"] == cpu_model()  # a time says little without its CPU
    grid = Image.open(trained / "counterfactuals.png")
    assert grid.size[0] > 4 * 16 and grid.size[1] > 4 * 16
    assert sorted(p.name for p in (trained / "samples").iterdir()) == ["step_0000003.png", "step_0000006.png"]
    assert list((trained / "tensorboard").iterdir())


def test_resume_continues_and_refuses_to_overwrite(trained: Path, tmp_path: Path) -> None:
    out = run("train", TINY, "--out", trained, "--quiet", "--set", "train.steps=8", "--resume")
    assert "resumed from step 6" in out and "finished step 8/8" in out and "(2 steps from step 6)" in out
    assert json.loads((trained / "model" / "meta.json").read_text())["trained_from_step"] == 6
    err = run("train", TINY, "--out", trained, "--quiet", code=2)
    assert "already holds a training run" in err
    err = run("train", TINY, "--out", tmp_path / "fresh", "--resume", code=2)
    assert "--resume: no checkpoint" in err


def test_sample_and_intervene(trained: Path, tmp_path: Path) -> None:
    run("sample", trained, "--n", 8, "--out", tmp_path / "s.png")
    assert Image.open(tmp_path / "s.png").size[0] > 0
    run("intervene", trained, "--do", "shape=disk", "--do", "background=2", "--n", 4, "--out", tmp_path / "i.png")
    assert (tmp_path / "i.png").exists()
    err = run("intervene", trained, "--do", "shape=circle", code=2)
    assert "do shape=circle: unknown class name" in err
    err = run("intervene", trained, "--do", "shape=7", code=2)
    assert "class id out of range, expected 0..3" in err
    err = run("intervene", trained, "--do", "colour=1", code=2)
    assert "not an intervenable node" in err
    err = run("sample", tmp_path / "nothing", code=2)
    assert "no such checkpoint directory" in err


def test_generate_png_and_shards(trained: Path, tmp_path: Path) -> None:
    run("generate", trained, "--n", 25, "--per-shape", 5, "--out", tmp_path / "png", "--batch-size", 10)
    rows = list(csv.DictReader(open(tmp_path / "png" / "labels.csv")))
    assert len(rows) == 25 and set(rows[0]) == {"file", "shape", "texture", "background"}
    for i in range(0, 25, 5):  # one shape draw per group of per-shape images
        assert len({r["shape"] for r in rows[i:i + 5]}) == 1
    assert Image.open(tmp_path / "png" / rows[0]["file"]).size == (16, 16)
    run("generate", trained, "--n", 25, "--out", tmp_path / "st", "--format", "safetensors")
    shard = load_file(str(tmp_path / "st" / "shard_00000.safetensors"))
    assert shard["images"].shape == (25, 3, 16, 16) and shard["labels"].shape == (25, 3)
    again = tmp_path / "st2"
    run("generate", trained, "--n", 25, "--out", again, "--format", "safetensors")
    assert (again / "shard_00000.safetensors").read_bytes() == (tmp_path / "st" / "shard_00000.safetensors").read_bytes()


def test_generate_into_a_file_fails_cleanly(trained: Path, tmp_path: Path) -> None:
    target = tmp_path / "afile"
    target.write_text("x")
    err = run("generate", trained, "--n", 5, "--out", target, code=1)
    assert "exists and is a file" in err
    assert target.read_text() == "x"


@pytest.mark.parametrize("suffix", ["png", "svg", "dot"])
def test_graph_pictures(tmp_path: Path, suffix: str) -> None:
    out = run("graph", TINY, "--out", tmp_path / f"g.{suffix}")
    assert "mnist.shape" in out and (tmp_path / f"g.{suffix}").stat().st_size > 100
    if suffix == "dot":
        assert "shape -> mask;" in (tmp_path / "g.dot").read_text()


def test_help_has_examples() -> None:
    for command in ("train", "sample", "intervene", "generate", "validate", "graph"):
        assert "Example" in run(command, "--help")


def test_plugins_listed() -> None:
    out = run("plugins")
    assert "mnist.shape" in out and "gan.lsgan" in out and "mnist.wildlife" in out


def test_unwritable_output_is_one_line(trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode))
    err = run("generate", trained, "--n", 5, "--out", tmp_path / "set", code=1)
    assert f"{tmp_path} is not writable" in err and not (tmp_path / "set").exists()
    err = run("train", TINY, "--out", tmp_path / "run", "--quiet", code=1)
    assert "is not writable" in err


def test_conflicting_settings_are_one_line(tmp_path: Path) -> None:
    err = run("train", TINY, "--out", tmp_path / "r", "--set", "train.epochs=1", code=2)
    assert "train: give either steps or epochs, not both" in err
    err = run("generate", TINY, "--n", 5, "--out", tmp_path / "g", "--shard", "3/2", code=2)
    assert "--shard 3/2" in err
