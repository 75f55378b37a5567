"""Checkpoint directories: round trips, strict loading, and refusing files that would run code."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from scmgen import SCM, SpecError
from tests.conftest import TINY


@pytest.fixture
def saved(tmp_path: Path) -> tuple[SCM, Path]:
    model = SCM.from_yaml(TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model, model.save_pretrained(tmp_path / "model")


def test_round_trip_gives_identical_samples(saved: tuple[SCM, Path]) -> None:
    model, path = saved
    files = sorted(p.name for p in path.iterdir())
    assert files == ["backdrop.safetensors", "foreground.safetensors", "graph.yaml", "mask.safetensors", "meta.json"]
    meta = json.loads((path / "meta.json").read_text())
    assert {"commit", "torch", "graph", "time"} <= set(meta)
    loaded = SCM.from_pretrained(path)
    assert torch.equal(loaded.sample(4, seed=1)["image"], model.sample(4, seed=1)["image"])
    assert not list(path.parent.glob(".model.tmp-*"))


def test_truncated_weights(saved: tuple[SCM, Path]) -> None:
    _, path = saved
    f = path / "mask.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(SpecError, match="mask.safetensors: unreadable or truncated safetensors file"):
        SCM.from_pretrained(path)


def test_missing_weights_and_missing_dir(saved: tuple[SCM, Path], tmp_path: Path) -> None:
    _, path = saved
    (path / "foreground.safetensors").unlink()
    with pytest.raises(SpecError, match="foreground.safetensors: missing weights file"):
        SCM.from_pretrained(path)
    with pytest.raises(SpecError, match="no such checkpoint directory"):
        SCM.from_pretrained(tmp_path / "nothing")


def test_wrong_shapes_name_the_key(saved: tuple[SCM, Path]) -> None:
    from safetensors.torch import load_file, save_file

    _, path = saved
    state = load_file(str(path / "mask.safetensors"))
    state["fc.weight"] = torch.zeros(3, 3)
    save_file(state, str(path / "mask.safetensors"))
    with pytest.raises(SpecError, match=r"mask.safetensors:fc.weight: shape \(3, 3\), expected"):
        SCM.from_pretrained(path)


def test_checkpoint_of_another_graph(saved: tuple[SCM, Path]) -> None:
    _, path = saved
    text = (path / "graph.yaml").read_text().replace("width: 8", "width: 16", 1)
    (path / "graph.yaml").write_text(text)
    with pytest.raises(SpecError, match="weights do not fit this mechanism|shape"):
        SCM.from_pretrained(path)


class _Evil:
    def __reduce__(self):  # noqa: D105 - a pickle that would run a command when loaded
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    from scmgen.checkpoint import safe_torch_load

    evil = tmp_path / "trainer_state.pt"
    with open(evil, "wb") as f:
        pickle.dump({"step": _Evil()}, f)
    with pytest.raises(SpecError, match="refused to load"):
        safe_torch_load(evil, str(tmp_path))


def test_failed_save_leaves_old_checkpoint(saved: tuple[SCM, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    model, path = saved
    before = (path / "mask.safetensors").read_bytes()

    def boom(*a, **k):
        raise OSError("No space left on device")

    monkeypatch.setattr("scmgen.model.write_json", boom)
    with pytest.raises(OSError, match="No space left"):
        model.save_pretrained(path)
    assert (path / "mask.safetensors").read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["model"]


def test_paths_in_files_cannot_escape(tmp_path: Path) -> None:
    from scmgen.paths import inside

    (tmp_path / "set" / "images").mkdir(parents=True)
    assert inside(tmp_path / "set", "images/0.png", "labels.csv", "row 2") == (tmp_path / "set" / "images" / "0.png").resolve()
    with pytest.raises(SpecError, match=r"labels.csv: row 2: '../../etc/passwd' leads outside"):
        inside(tmp_path / "set", "../../etc/passwd", "labels.csv", "row 2")
    with pytest.raises(SpecError, match="is an absolute path"):
        inside(tmp_path / "set", "/etc/passwd", "labels.csv", "row 3")
    (tmp_path / "set" / "link").symlink_to("/etc")
    with pytest.raises(SpecError, match="leads outside"):
        inside(tmp_path / "set", "link/passwd", "labels.csv", "row 4")


def test_graph_data_path_cannot_leave_the_graph_folder(tmp_path: Path, tiny_raw: dict, write_graph) -> None:
    from click.testing import CliRunner

    from scmgen.cli import cli

    tiny_raw["data"]["params"]["root"] = "../../secrets"
    path = write_graph(tiny_raw)
    result = CliRunner().invoke(cli, ["train", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert f"{path}: data.params.root: '../../secrets' leads outside" in result.stderr
