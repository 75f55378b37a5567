"""Ctrl-C during training saves a checkpoint and exits cleanly; the run then resumes."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, TINY


def test_sigint_saves_a_checkpoint_and_resume_continues(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "scmgen", "train", str(TINY), "--out", str(out), "--quiet",
           "--set", "train.steps=100000", "--set", "train.checkpoint_every=0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while not (out / "tensorboard").exists() and time.time() < deadline:  # training has started
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, output
    assert "interrupted at step" in output and "Traceback" not in output
    latest = (out / "checkpoints" / "latest").read_text().strip()
    step = int(latest.split("_")[1])
    assert step > 0 and (out / "checkpoints" / latest / "trainer_state.pt").exists()
    assert (out / "model" / "mask.safetensors").exists()
    resumed = subprocess.run([*cmd[:-4], "--set", f"train.steps={step + 3}", "--resume"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from step {step}" in resumed.stdout and f"finished step {step + 3}/{step + 3}" in resumed.stdout
