"""Safetensors files: reading them (memory-mapped) with errors that name the file, and writing them atomically."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from .files import atomic_path


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, memory-mapped; a missing or damaged file raises CheckpointError."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file ({error}); delete it and recreate it") \
            from None


def safetensors_metadata(path: str | os.PathLike[str]) -> dict[str, str] | None:
    """The metadata of a safetensors file, None when it is missing or unreadable."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return None


def write_safetensors(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write `tensors` (moved to the CPU, contiguous, no two sharing memory) as a safetensors file, atomically."""
    with atomic_path(Path(path)) as temporary:
        save_file(storable(tensors), str(temporary), metadata=dict(metadata or {}))


def storable(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors with no two sharing memory, as safetensors requires (legacy files hold views)."""
    seen: set[int] = set()
    result = {}
    for key, value in tensors.items():
        value = value.detach().to("cpu").contiguous()
        pointer = value.untyped_storage().data_ptr() if value.numel() else None
        if pointer is not None and pointer in seen:
            value = value.clone()
        elif pointer is not None:
            seen.add(pointer)
        result[key] = value
    return result
