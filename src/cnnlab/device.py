"""Choosing the compute device (CUDA, then Apple's MPS, then the CPU, unless the user names one) and
what the CPU can do."""

from __future__ import annotations

import functools

import torch

from cnnlab.errors import ConfigError
from cnnlab.portable import cpu_flags


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) picks the best available device; anything else must exist here."""
    if name is None or str(name) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for, but this PyTorch sees no CUDA GPU; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} does not exist: this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"device {name!r} asked for, but MPS is not available; use --device cpu")
    elif device.type != "cpu":
        raise ConfigError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so wall-clock timings mean something on asynchronous devices."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
"""CPU flags (Linux's names, :func:`cnnlab.portable.cpu_flags`) of bf16 dot products in hardware."""


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """True if this CPU computes bf16 dot products in hardware (x86 AVX512-BF16/AMX-BF16, Arm BF16: Apple
    M2 and later, not M1); False where that is unknown.

    Without it oneDNN emulates bf16 and the products run slower than float32.
    """
    flags = cpu_flags()
    return flags is not None and bool(flags & BF16_FLAGS)
