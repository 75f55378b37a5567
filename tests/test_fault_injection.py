"""A small run of scripts/fault_injection.py: SIGKILL during training and generation, resume,
and the results are bit-identical to uninterrupted runs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_killed_runs_resume_bit_identically(tmp_path: Path) -> None:
    out = tmp_path / "fi"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "fault_injection.py"), "--kills", "2",
                             "--steps", "300", "--images", "1500", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["train"]["kills_landed"] >= 1 and report["generate"]["kills_landed"] >= 1
    assert report["train"]["identical"] and report["train"]["no_step_lost"]
    assert report["generate"]["identical"]
    assert report["train"]["bytes_compared"] > 0 and report["generate"]["bytes_compared"] > 0
