"""Truncated noise: bounded, deterministic, the same random draws as untruncated sampling, and a
one-line error for a bad --truncation."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scmgen import SCM, UsageError, weights
from scmgen.noise import parse_truncation, truncated_noise
from scmgen.sampling import generate_dataset
from tests.conftest import TINY
from tests.test_cli import run


def test_truncated_noise_is_deterministic_and_bounded() -> None:
    u = torch.randn(20000, 16)
    z = truncated_noise(u, 0.5)
    assert torch.equal(z, truncated_noise(u, 0.5))
    assert z.abs().max() <= 1.0 and z.std().item() == pytest.approx(0.5 * 0.8796, rel=0.02)  # truncnorm(-2, 2) std
    assert (z[:, 0][torch.argsort(u[:, 0])].diff() >= 0).all()  # monotone: order kept


def test_parse_truncation() -> None:
    spec = SCM.from_yaml(TINY).spec
    assert parse_truncation(None, spec) == {}
    assert parse_truncation("0.5", spec) == {"u_shape": 0.5, "u_texture": 0.5, "u_background": 0.5}
    assert parse_truncation("u_shape=0.7,u_texture=0.9", spec) == {"u_shape": 0.7, "u_texture": 0.9}
    with pytest.raises(UsageError, match="'shape' is not a normal noise node .*u_shape, u_texture"):
        parse_truncation("shape=0.5", spec)
    for bad in ("0", "2.5", "u_shape=x"):
        with pytest.raises(UsageError, match="expected a value in \\(0, 2\\]"):
            parse_truncation(bad, spec)


def test_truncation_keeps_the_draws_and_changes_only_what_the_node_feeds(tmp_path: Path) -> None:
    model = SCM.from_yaml(TINY).eval()
    plain = model.sample_exogenous(64, torch.Generator().manual_seed(0))
    cut = model.sample_exogenous(64, torch.Generator().manual_seed(0), {"u_shape": 0.5})
    assert cut["u_shape"].abs().max() <= 1.0 and not torch.equal(cut["u_shape"], plain["u_shape"])
    assert all(torch.equal(cut[k], plain[k]) for k in plain if k != "u_shape")

    sets = {}
    for name, truncation in (("plain", None), ("cut", {"u_shape": 0.5})):
        generate_dataset(model, 40, tmp_path / name, per_shape=5, image_format="safetensors", truncation=truncation)
        sets[name] = load_file(str(tmp_path / name / "shard_00000.safetensors"))
        assert json.loads((tmp_path / name / "meta.json").read_text())["truncation"] == (truncation or {})
    assert torch.equal(sets["cut"]["labels"], sets["plain"]["labels"])  # same labels, other shapes
    assert not torch.equal(sets["cut"]["images"], sets["plain"]["images"])


def test_generate_cli_truncation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # an earlier module's random-weights record would add its note line to the one-line error
    monkeypatch.setitem(weights._state, "used_random", set())
    monkeypatch.setitem(weights._state, "random_init", False)
    run("generate", TINY, "--n", 10, "--out", tmp_path / "g", "--format", "safetensors",
        "--truncation", "u_shape=0.5")
    assert json.loads((tmp_path / "g" / "meta.json").read_text())["truncation"] == {"u_shape": 0.5}
    err = run("generate", TINY, "--n", 10, "--out", tmp_path / "h", "--truncation", "u_x=0.5",
              code=2)
    assert "'u_x' is not a normal noise node" in err and not (tmp_path / "h").exists()
