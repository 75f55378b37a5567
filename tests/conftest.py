from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from scmgen import weights

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "graphs" / "tiny_shapes.yaml"


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def random_vgg_record_per_module() -> Iterator[None]:
    """For modules that run LPIPS: the random-VGG record it leaves stays in the module (other tests
    count note lines). One thread: many small passes ran 50x slower with two threads on a busy
    two-core machine."""
    saved, threads = weights._state["used_random"], torch.get_num_threads()
    weights._state["used_random"] = set()
    torch.set_num_threads(1)
    yield
    weights._state["used_random"] = saved
    torch.set_num_threads(threads)


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
