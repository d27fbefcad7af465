"""Device checks: one place that turns a device name into a torch.device this machine can run on, or says why not."""

from __future__ import annotations

import torch

from ..errors import InvalidArgumentError

COMPUTE_TYPES = ("cpu", "cuda", "mps", "xpu")


def default_device() -> torch.device:
    """CUDA when a GPU is visible, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The torch.device for `device` (None: `default_device()`); unknown names and devices this machine does not
    have raise InvalidArgumentError with what to use instead."""
    if device is None:
        return default_device()
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidArgumentError(f"device {device!r} is not a device torch knows; use cpu, cuda or cuda:N") \
            from None
    if target.type not in COMPUTE_TYPES:
        raise InvalidArgumentError(f"device {device!r} cannot run the networks; use cpu, cuda or cuda:N")
    available = device_count(target.type)
    if available == 0:
        raise InvalidArgumentError(f"device {device!r}: no {target.type.upper()} device is available here; "
                                   "use device cpu")
    if target.index is not None and target.index >= available:
        raise InvalidArgumentError(f"device {device!r}: this machine has {available} {target.type} device(s), "
                                   f"numbered 0 to {available - 1}")
    return target


def device_count(device_type: str) -> int:
    """How many devices of a type this machine can use (the CPU counts as one)."""
    if device_type == "cpu":
        return 1
    if device_type == "cuda":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device_type == "mps":
        return int(torch.backends.mps.is_available())
    backend = getattr(torch, device_type, None)
    return backend.device_count() if backend is not None and backend.is_available() else 0
