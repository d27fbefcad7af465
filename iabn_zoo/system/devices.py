"""Device checks: one place that turns a device name into a torch.device this machine can run on, or says why not.

Every entry point that runs a network (fine-tuning, evaluation, prediction, segmentation, memory measurement, and
the command line for all of them) goes through `resolve_device`, so every device string, known to torch or not,
gets the same typed error naming what this machine can use instead.
"""

from __future__ import annotations

import warnings

import torch

from ..errors import bad_argument

COMPUTE_TYPES = ("cpu", "cuda", "mps", "xpu")
AUTO = "auto"


def default_device() -> torch.device:
    """CUDA when a GPU is visible, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def usable_devices() -> list[str]:
    """The device names this machine can run the networks on, `auto` first."""
    names = [AUTO, "cpu"]
    for device_type in COMPUTE_TYPES[1:]:
        count = device_count(device_type)
        names += [device_type] + [f"{device_type}:{index}" for index in range(count)] if count else []
    return names


def resolve_device(device: str | torch.device | None = None, *, parameter: str = "device") -> torch.device:
    """The torch.device for `device` (None or "auto": `default_device()`).

    Names torch does not know, device types that cannot run the networks (meta, xla, ...), types this machine lacks
    and indices past its device count raise InvalidArgumentError naming `parameter` and what to use instead.
    """
    if device is None or device == AUTO:
        return default_device()
    usable = ", ".join(usable_devices())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about deprecated names such as 'mkldnn'
            target = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise bad_argument(parameter, f"{device!r} is not a device torch knows; this machine can use: {usable}") \
            from None
    if target.type not in COMPUTE_TYPES:
        raise bad_argument(parameter, f"{device!r} cannot run the networks; this machine can use: {usable}")
    available = device_count(target.type)
    if available == 0:
        raise bad_argument(parameter, f"{device!r}: no {target.type.upper()} device is available here; "
                                      f"use {{{parameter}}} cpu")
    if target.index is not None and target.index >= available:
        raise bad_argument(parameter, f"{device!r}: this machine has {available} {target.type} device(s), numbered "
                                      f"0 to {available - 1}")
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
