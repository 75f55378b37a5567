"""Counterfactual metrics on the tiny graphs: the Frechet distance, every metric's keys, exact
minimality of generated samples, cached predictors, a one-mechanism cGAN, and `scmgen evaluate`
(reports, comparison, one-line errors)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from scmgen import weights
from scmgen.evaluation import evaluate_model
from scmgen.evaluation.metrics import frechet_distance
from scmgen.evaluation.predictors import load_or_train_predictors
from scmgen.model import SCM
from scmgen.spec import parse_spec
from tests.cli_helpers import run_cli

FAST = {"n": 24, "n_generated": 24, "n_composition": 3, "steps": 1, "encoder_steps": 5, "predictor_epochs": 1,
        "progress": False}


pytestmark = pytest.mark.usefixtures("random_vgg_record_per_module")


@pytest.fixture(autouse=True)
def _test_record(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.setitem(weights._state, "used_random", set())
    torch.set_num_threads(1)
    monkeypatch.setenv("SCMGEN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def cgan_raw(tiny_raw: dict[str, Any]) -> dict[str, Any]:
    """The tiny graph's data, one conditional generator: the cGAN baseline at toy size."""
    return {**tiny_raw, "name": "tiny_cgan", "intervenable": ["y"],
            "nodes": {"y": tiny_raw["nodes"]["y"], "u": {"kind": "noise", "dim": 8},
                      "image": {"kind": "mechanism", "plugin": "mnist.image", "inputs": {"noise": "u", "label": "y"},
                                "params": {"width": 8, "init_size": 4, "out_size": 16}}},
            "losses": {"gan": tiny_raw["losses"]["gan"]}}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import yaml

    from tests.conftest import TINY

    root = tmp_path_factory.mktemp("ckpts")
    raw = yaml.safe_load(TINY.read_text())
    no_data = {**raw, "losses": {"binary": raw["losses"]["binary"]}}
    no_data.pop("data")
    return {name: SCM(parse_spec(spec, name)).eval().save_pretrained(root / name / "model")
            for name, spec in (("cgn", raw), ("cgan", cgan_raw(raw)), ("no_data", no_data))}


def test_frechet_distance_of_a_set_with_itself_is_zero_and_grows_with_a_shift() -> None:
    a = torch.randn(2000, 6, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + 1) == pytest.approx(6.0, rel=1e-6)  # |mean shift|^2
    assert frechet_distance(a, 2 * a) == pytest.approx(6.0, rel=0.1)  # sum (2 - 1)^2 of the std ratios
    b = torch.randn(2000, 6, generator=torch.Generator().manual_seed(1)) @ torch.randn(6, 6) + 0.3
    scipy = pytest.importorskip("scipy.linalg")  # the textbook formula with scipy's matrix square root
    s_a, s_b = np.cov(a.double().numpy(), rowvar=False), np.cov(b.double().numpy(), rowvar=False)
    textbook = ((a.double().mean(0) - b.double().mean(0)) ** 2).sum().item() + np.trace(s_a + s_b) \
        - 2 * np.trace(scipy.sqrtm(s_a @ s_b).real)
    assert frechet_distance(a, b) == pytest.approx(textbook, rel=1e-6)


def test_predictors_train_once_per_data_set(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    model = SCM.from_pretrained(checkpoints["cgn"])
    said: list[str] = []
    first = load_or_train_predictors(model.spec, str(checkpoints["cgn"] / "graph.yaml"), 1, progress=False,
                                     say=said.append, root=tmp_path)
    assert first.trained_now and set(first.test_accuracy) == {"shape", "texture", "background"}
    cgan = SCM.from_pretrained(checkpoints["cgan"])  # the same data: the same predictors
    again = load_or_train_predictors(cgan.spec, str(checkpoints["cgan"] / "graph.yaml"), 1, progress=False,
                                     say=said.append, root=tmp_path)
    assert not again.trained_now and again.directory == first.directory and len(said) == 2
    assert again.features(torch.zeros(3, 3, 16, 16)).shape == (3, 3 * 64)  # one backbone per factor


def test_every_metric_of_a_cgn(checkpoints: dict[str, Path]) -> None:
    model = SCM.from_pretrained(checkpoints["cgn"])
    results, panel = evaluate_model(model, checkpoints["cgn"], say=lambda _: None, **FAST)
    assert {"abduction", "effectiveness", "minimality", "composition", "realism", "predictors", "encoder",
            "seconds", "lpips"} <= set(results)
    assert {"l1", "lpips", "l1_encoder", "lpips_encoder", "label_accuracy"} <= set(results["abduction"])
    for source in ("real", "generated"):
        table = results["effectiveness"][source]
        assert set(table) == {"shape", "texture", "background"}
        assert table["texture"]["factor"] == "texture"
        assert set(table["texture"]["read_out"]["shape"]) == {"asked", "kept", "intended"}
        assert table["texture"]["read_out"]["texture"]["intended"] == "asked"
    for source in ("generated", "real"):
        nodes = results["minimality"][source]["nodes"]
        assert all(v["exact"] and v["max_abs_change_of_unchanged"] == 0.0 for v in nodes.values())
        assert nodes["background"]["unchanged_mechanisms"] == ["mask", "foreground"]
    assert set(results["composition"]) == {"1", "10"}
    assert set(results["realism"]["fd"]) == {"real", "generated", "reconstruction", "counterfactual"}
    assert panel.size[0] > 8 * 16 and panel.size[1] > 5 * 16  # 8 images; real, recon and 3 interventions


def test_a_one_mechanism_cgan_is_evaluable(checkpoints: dict[str, Path]) -> None:
    model = SCM.from_pretrained(checkpoints["cgan"])
    results, _ = evaluate_model(model, checkpoints["cgan"], say=lambda _: None, **FAST)
    assert results["effectiveness"]["real"]["y"]["factor"] == "shape"  # y is the class label: the shape
    assert set(results["effectiveness"]["real"]["y"]["read_out"]) == {"shape", "texture", "background"}
    assert results["minimality"]["generated"]["applicable"] is False


def test_cli_reports_each_checkpoint_and_compares(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    stdout, _ = run_cli("evaluate", checkpoints["cgn"], checkpoints["cgan"].parent, "--out", out, "--n", 16,
                        "--n-generated", 16, "--n-composition", 2, "--steps", 0, "--encoder-steps", 3,
                        "--predictor-epochs", 1, "--quiet")
    assert "tiny_shapes: effectiveness" in stdout and "comparison.md" in stdout
    for name in ("tiny_shapes", "tiny_cgan"):
        assert sorted(p.name for p in (out / name).iterdir()) == ["panel.png", "report.json", "report.md"]
    report = json.loads((out / "tiny_shapes" / "report.json").read_text())
    assert {"commit", "command", "seed", "device", "time", "results"} <= set(report)
    assert report["results"]["seconds"]["total"] > 0
    assert "## Effectiveness" in (out / "tiny_shapes" / "report.md").read_text()
    assert "Not applicable" in (out / "tiny_cgan" / "report.md").read_text()
    comparison = (out / "comparison.md").read_text()
    assert "| tiny_shapes |" in comparison and "| tiny_cgan |" in comparison
    assert not [p for p in out.rglob(".*")]  # every file written under a temporary name and renamed
    assert len(json.loads((out / "comparison.json").read_text())["rows"]) == 2


@pytest.mark.parametrize(("which", "message"), [
    ("missing", "no such checkpoint directory"),
    ("no_data", "the graph has no data section"),
])
def test_cli_bad_checkpoint_is_one_line_and_exit_2(checkpoints: dict[str, Path], tmp_path: Path, which: str,
                                                   message: str) -> None:
    path = tmp_path / "nothing" if which == "missing" else checkpoints[which]
    _, stderr = run_cli("evaluate", checkpoints["cgn"], path, "--out", tmp_path / "eval", code=2)
    assert message in stderr
