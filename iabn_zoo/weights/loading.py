"""From a weights name to tensors in a network: the verified, converted tensors of a registered checkpoint, checked
key for key and loaded strictly.

After the first verified load of a registered file its tensors are kept as safetensors (with the source file and
md5 in the metadata) and later loads read that copy, memory-mapped, without unpickling. `build_pretrained` also
skips the random initialisation the weights would overwrite: it builds the network on the `meta` device and adopts
the checkpoint's tensors as its parameters, which makes a warm `create_model(..., pretrained=True)` several times
faster than building, `torch.load` and `load_state_dict`. A Hub repository's tensors are read where the Hugging
Face cache keeps them (safetensors, memory-mapped; a pickle only through `torch.load(weights_only=True)`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError

from ..errors import CheckpointError, UnknownNameError
from ..system.tensor_files import read_safetensors, safetensors_metadata, write_safetensors
from .cache import converted_path, writer_lock
from .catalog import Weights, get_weights, is_weights, list_weights
from .checkpoint_reader import read_checkpoint
from .downloader import download
from .hf_hub.names import is_hub_name

CONVERTED_FORMAT = "iabn-zoo-state-dict/1"
CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".ckpt", ".bin", ".safetensors")
CLASSIFIER_PREFIX = "classifier."
LISTED_KEYS = 8  # per kind of mismatch in an error message


def load_state_dict(name_or_path: Any) -> dict[str, torch.Tensor]:
    """The tensors of a weights name, a `Weights` entry or a checkpoint file, with normalised keys, ready for
    `model.load_state_dict(..., strict=True)`."""
    if isinstance(name_or_path, Weights):
        return load_weights_state_dict(name_or_path)
    if isinstance(name_or_path, (str, os.PathLike)) and Path(name_or_path).is_file():
        return read_checkpoint(name_or_path)
    if isinstance(name_or_path, str) and is_weights(name_or_path):
        return load_weights_state_dict(get_weights(name_or_path))
    if isinstance(name_or_path, os.PathLike) or _looks_like_path(str(name_or_path)):
        raise CheckpointError(f"{name_or_path} is not a file; check the path, or pass a weights name "
                              "(`iabn-zoo list --pretrained` shows them).")
    raise UnknownNameError("weights name (nor an existing checkpoint file)", str(name_or_path), list_weights())


def _looks_like_path(text: str) -> bool:
    return os.sep in text or Path(text).suffix in CHECKPOINT_SUFFIXES


def load_weights_state_dict(weights: Weights, *, progress: bool = True) -> dict[str, torch.Tensor]:
    """A registered checkpoint's normalised tensors: from the safetensors copy when valid, else download and convert."""
    if is_hub_name(weights.name):  # a Hub repository: its verified file in the Hugging Face cache is the copy
        return read_checkpoint(download(weights, progress=progress))
    converted = converted_path(weights)
    cached = read_converted(converted, md5=weights.md5)
    if cached is not None:
        return cached
    source = download(weights, progress=progress)
    with writer_lock(converted):  # concurrent first uses: one process converts, the others read its copy
        cached = read_converted(converted, md5=weights.md5)
        if cached is not None:
            return cached
        state_dict = read_checkpoint(source)
        write_converted(state_dict, converted, source=source.name, md5=weights.md5)
    return state_dict


def read_converted(path: Path, *, md5: str) -> dict[str, torch.Tensor] | None:
    """The cached safetensors copy when it exists and was made from the file with `md5`; None otherwise (a damaged
    copy is rebuilt from the verified checkpoint)."""
    metadata = safetensors_metadata(path)
    if metadata is None or metadata.get("md5") != md5 or metadata.get("format") != CONVERTED_FORMAT:
        return None
    try:
        return read_safetensors(path)
    except CheckpointError:
        return None


def write_converted(tensors: Mapping[str, torch.Tensor], path: Path, *, source: str, md5: str) -> bool:
    """Write the safetensors copy atomically; False (with a warning) when the cache is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_safetensors(path, tensors, {"format": CONVERTED_FORMAT, "source": source, "md5": md5})
    except (OSError, SafetensorError) as error:  # safetensors reports a full disk as its own error
        warnings.warn(f"could not keep a safetensors copy in {path.parent} ({error}); every load will read the "
                      "original checkpoint until the cache is writable", stacklevel=3)
        return False
    return True


def load_pretrained(model: nn.Module, weights: Any, progress: bool = True) -> nn.Module:
    """Load the published tensors of `weights` (a `Weights` or its name) into `model`, strictly; returns `model`."""
    weights = _as_weights(weights)
    state_dict = load_weights_state_dict(weights, progress=progress)
    load_checked(model, state_dict, source=weights.name)
    return model


def build_pretrained(build: Callable[[], nn.Module], weights: Any, progress: bool = True) -> nn.Module:
    """`build()` a network and load `weights` into it, without the random initialisation the weights replace.
    The caller has imported whatever `build` needs: module-level tensors must not land on the meta device."""
    weights = _as_weights(weights)
    try:  # first, so that a constructor refusing its arguments refuses them before any download
        with torch.device("meta"):
            model = build()
    except (NotImplementedError, RuntimeError):  # a constructor that needs real data: initialise normally
        model = None
    state_dict = load_weights_state_dict(weights, progress=progress)
    if model is None:
        return load_checked(build(), state_dict, source=weights.name)
    load_checked(model, state_dict, source=weights.name, assign=True)
    if _has_meta_tensors(model):  # state the checkpoint does not hold (non-persistent buffers): build for real
        return load_checked(build(), state_dict, source=weights.name)
    return model


def load_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str,
                 assign: bool = False) -> nn.Module:
    """`model.load_state_dict(strict=True)` after checking names and shapes; a mismatch lists every culprit.

    Classifier tensors are left out when the model has no classifier (`features_only`, `num_classes=0`).
    With `assign=True` the checkpoint's tensors become the model's (cast to the model's dtypes).
    """
    expected = model.state_dict()
    state_dict = _without_unused_classifier(state_dict, expected)
    check_keys(expected, state_dict, source=source, model_name=type(model).__name__)
    if assign:
        state_dict = {key: value.to(expected[key].dtype) for key, value in state_dict.items()}
    model.load_state_dict(state_dict, strict=True, assign=assign)
    return model


def check_keys(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], *, source: str,
               model_name: str = "the model") -> None:
    """Raise CheckpointError listing missing, unexpected and mis-shaped keys of `found` against `expected`."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    misshaped = [f"{key} (checkpoint {tuple(found[key].shape)}, model {tuple(expected[key].shape)})"
                 for key in expected if key in found and found[key].shape != expected[key].shape]
    if not (missing or unexpected or misshaped):
        return
    parts = [_listing(title, keys) for title, keys in
             (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if keys]
    raise CheckpointError(
        f"{source} does not fit {model_name}: " + "; ".join(parts) + ". Build the architecture with the arguments "
        "the weights were trained with (`zoo.create_model(WEIGHTS_NAME, pretrained=True)`, which also accepts "
        "num_classes=N for a new classifier), or check the entry's arch and arch_kwargs."
    )


def _listing(title: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:LISTED_KEYS])
    more = f" and {len(keys) - LISTED_KEYS} more" if len(keys) > LISTED_KEYS else ""
    return f"{len(keys)} {title} key{'s' if len(keys) != 1 else ''}: {shown}{more}"


def _without_unused_classifier(state_dict: Mapping[str, torch.Tensor],
                               expected: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    if any(key.startswith(CLASSIFIER_PREFIX) for key in expected):
        return state_dict
    return {key: value for key, value in state_dict.items() if not key.startswith(CLASSIFIER_PREFIX)}


def _has_meta_tensors(model: nn.Module) -> bool:
    return any(tensor.is_meta for tensor in [*model.parameters(), *model.buffers()])


def _as_weights(weights: Any) -> Weights:
    return get_weights(weights) if isinstance(weights, str) else weights
