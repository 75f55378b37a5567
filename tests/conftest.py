from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "graphs" / "tiny_shapes.yaml"


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture
def tiny_raw() -> dict:
    return yaml.safe_load(TINY.read_text())


@pytest.fixture
def write_graph(tmp_path: Path):
    """Write a raw spec mapping (or text) to a YAML file and return its path."""

    def write(raw: dict | str, name: str = "graph.yaml") -> Path:
        path = tmp_path / name
        path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
        return path

    return write
