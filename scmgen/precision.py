"""The float precision a run computes in, and "auto", which picks it for the hardware.

bf16 autocast doubles the MNIST CGN's training speed on CPUs with bf16 matrix units (Intel AMX,
AVX512-BF16) and suits recent GPUs, but where the hardware lacks them it is emulated: on an AVX2-only
AMD EPYC the same step ran 14x slower than in fp32 (`benchmarks/mnist_train_step.py`,
benchmarks/RESULTS.md). "auto" therefore means bf16 only where the device computes it natively.
"""
from __future__ import annotations

import contextlib
import warnings

import torch

from scmgen.errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` has bf16 arithmetic in hardware (CUDA: compute capability 8.0 and up)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private, hence looked up
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def resolve(precision: str, device: torch.device | str, warn: bool = True) -> str:
    """"fp32" or "bf16": `precision` itself, or for "auto" what `device` computes natively. An explicit
    bf16 where it would be emulated is kept, with a warning (unless `warn` is off) saying what it costs."""
    if precision not in PRECISIONS:
        raise UsageError(f"precision '{precision}': expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if warn and precision == "bf16" and torch.device(device).type == "cpu" and not native_bf16(device):
        warnings.warn("bf16 on a CPU without bf16 units (AMX / AVX512-BF16) is emulated and many times slower "
                      "than fp32; precision auto picks fp32 here", RuntimeWarning, stacklevel=2)
    return precision


def autocast(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` when `precision` resolves to bf16, else nothing."""
    device = torch.device(device)
    if resolve(precision, device, warn=False) == "bf16":  # warned about where the run was set up
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
