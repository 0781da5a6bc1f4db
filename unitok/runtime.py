"""Where bf16 pays: autocast only on hardware with native bf16 matmul.

On CPUs with AVX512-BF16 or AMX, oneDNN multiplies bf16 matrices several times faster than fp32;
on CPUs without them (AVX2 only) bf16 matmul falls back to a reference kernel that is *much*
slower than fp32 (measured 1 vs 44 GFLOPS here). ``bf16: auto`` picks per machine.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(setting: bool | str, device: str | torch.device = "cpu") -> bool:
    """Resolve a ``bf16`` setting (True, False or "auto") for ``device``."""
    if setting != "auto":
        return bool(setting)
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()
