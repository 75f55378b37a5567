"""Where a result came from: commit, versions, machine. Written into every checkpoint and result."""
from __future__ import annotations

import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import scmgen


def git_commit() -> str:
    """The commit of the scmgen checkout, with '+dirty' when it has uncommitted changes."""
    root = Path(scmgen.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    """The CPU's name (/proc/cpuinfo): a timing means little without it, and machines of one
    kind differ (bf16 units or none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run_metadata(device: str | torch.device = "cpu", **extra: Any) -> dict[str, Any]:
    return {
        "scmgen": scmgen.__version__,
        "commit": git_commit(),
        "command": shlex.join(sys.argv),  # quoted: the line can be pasted back into a shell
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "machine": f"{platform.machine()} {platform.system()}, {torch.get_num_threads()} threads",
        "device": str(device),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
