"""Precision "auto": bf16 only where the device computes it natively, recorded as what ran."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from scmgen import SCM, UsageError
from scmgen.data import load_dataset
from scmgen.precision import autocast, native_bf16, resolve
from scmgen.trainer import Trainer
from tests.conftest import TINY


@pytest.fixture(params=[True, False], ids=["bf16 units", "no bf16 units"])
def bf16_units(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Pretend the CPU has (or lacks) AMX / AVX512-BF16, whatever this machine has."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: request.param)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    return request.param


def test_auto_is_bf16_exactly_where_the_cpu_has_bf16_units(bf16_units: bool) -> None:
    assert native_bf16("cpu") is bf16_units
    assert resolve("auto", "cpu") == ("bf16" if bf16_units else "fp32")
    with autocast("cpu", "auto"):
        assert torch.is_autocast_enabled("cpu") is bf16_units
        assert (torch.nn.Linear(2, 2)(torch.ones(1, 2)).dtype == torch.bfloat16) is bf16_units
    assert resolve("fp32", "cpu") == "fp32"


def test_explicit_bf16_is_kept_and_warned_about_only_where_it_is_emulated(bf16_units: bool) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve("bf16", "cpu") == "bf16"
    assert [str(w.message) for w in caught if "emulated" in str(w.message)] == ([] if bf16_units else [
        "bf16 on a CPU without bf16 units (AMX / AVX512-BF16) is emulated and many times slower than fp32; "
        "precision auto picks fp32 here"])


def test_an_unknown_precision_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="precision 'fp16': expected one of auto, fp32, bf16"):
        resolve("fp16", "cpu")


def test_a_trainer_runs_and_records_what_auto_resolved_to(tmp_path: Path, bf16_units: bool) -> None:
    model = SCM.from_yaml(TINY, ["train.steps=2", "train.precision=auto", "train.checkpoint_every=2"])
    trainer = Trainer(model, load_dataset(model.spec, str(TINY)), tmp_path, progress=False, tensorboard=False)
    seen: list[torch.dtype] = []
    layer = next(m for m in model.mechanisms["mask"].modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    handle = layer.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    trainer.fit()
    handle.remove()
    expected = "bf16" if bf16_units else "fp32"
    assert trainer.precision == expected
    assert set(seen) == {torch.bfloat16 if bf16_units else torch.float32}
    meta = json.loads((tmp_path / "checkpoints" / "step_0000002" / "meta.json").read_text())
    assert meta["precision"] == expected
