"""Counterfactual data sets on disk: resumable after a kill, byte-identical, never half-visible."""
from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from scmgen import SCM, UsageError
from scmgen.sampling import generate_dataset
from tests.conftest import TINY


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def model() -> SCM:
    return SCM.from_yaml(TINY).eval()


def kill_after(images: int):
    seen = {"n": 0}

    def progress(k: int) -> None:
        seen["n"] += k
        if seen["n"] >= images:
            raise Killed()

    return progress


def same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != "meta.json")
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != "meta.json")
    return files_a == files_b and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)


@pytest.mark.parametrize("image_format", ["png", "safetensors"])
def test_killed_generation_resumes_identically(model: SCM, tmp_path: Path, image_format: str) -> None:
    kw = dict(per_shape=5, seed=3, batch_size=10, image_format=image_format, part_size=20)
    generate_dataset(model, 70, tmp_path / "straight", **kw)
    with pytest.raises(Killed):
        generate_dataset(model, 70, tmp_path / "resumed", progress=kill_after(45), **kw)
    assert not (tmp_path / "resumed").exists()  # nothing that looks complete
    assert (tmp_path / ".resumed.partial").exists()
    result = generate_dataset(model, 70, tmp_path / "resumed", **kw)
    assert result.resumed_parts == 2
    assert same_tree(tmp_path / "straight", tmp_path / "resumed")
    assert not (tmp_path / ".resumed.partial").exists()


def test_partial_of_other_settings_is_not_reused(model: SCM, tmp_path: Path) -> None:
    with pytest.raises(Killed):
        generate_dataset(model, 40, tmp_path / "d", per_shape=5, part_size=10, progress=kill_after(20))
    result = generate_dataset(model, 40, tmp_path / "d", per_shape=5, part_size=10, seed=1)
    assert result.resumed_parts == 0
    fresh = generate_dataset(model, 40, tmp_path / "e", per_shape=5, part_size=10, seed=1)
    assert same_tree(result.out, fresh.out)


def test_existing_output_is_refused(model: SCM, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(UsageError, match="already exists"):
        generate_dataset(model, 5, tmp_path / "d")


def test_shards_write_disjoint_parts_and_the_last_assembles(model: SCM, tmp_path: Path) -> None:
    kw = dict(per_shape=5, seed=2, batch_size=10, image_format="safetensors", part_size=10)
    whole = generate_dataset(model, 40, tmp_path / "whole", **kw)
    first = generate_dataset(model, 40, tmp_path / "sharded", shard=(0, 2), **kw)
    assert not first.complete and not (tmp_path / "sharded").exists()
    second = generate_dataset(model, 40, tmp_path / "sharded", shard=(1, 2), **kw)
    assert second.complete and same_tree(whole.out, tmp_path / "sharded")
    with pytest.raises(UsageError, match="--shard 2/2"):
        generate_dataset(model, 40, tmp_path / "x", shard=(2, 2))
