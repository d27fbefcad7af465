"""Reading checkpoint files safely: the published files as the authors wrote them, normalised to our modules' keys.

Files are unpickled with `torch.load(weights_only=True)` only, so a file that needs arbitrary code is refused, never
run. Normalising means: take `state_dict` (dropping the training extras), flatten the Vistas `body`/`head`/`cls`
dicts into dotted keys, strip `module.` prefixes, undo the 2017 wrapped-bn layout and fill missing
`num_batches_tracked`.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..system.tensor_files import read_safetensors

# Keys under which training scripts keep the model's tensors; the authors' scripts use the first.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
DATA_PARALLEL_PREFIX = "module."
WRAPPED_NORM_SEGMENT = "bn"


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file (torch.save legacy or zip, or safetensors) safely and normalise its keys."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return normalise(unpickle_safely(path), source=str(path))


def unpickle_safely(path: Path) -> Any:
    """`torch.load(weights_only=True)` on CPU; every failure becomes a CheckpointError that names the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        foreign = _foreign_global(error)
        if foreign is not None:
            raise CheckpointError(
                f"{path} was refused: unpickling it would call {foreign}, which is not a tensor or container, so "
                "the file could run arbitrary code. iabn-zoo never executes it; get the file from its published "
                "source, or, only if you trust it, re-save its state_dict with torch.save."
            ) from None
        raise _unreadable(path, error) from None
    except Exception as error:  # torch's reader of untrusted bytes fails in many ways (struct.error, assertions...)
        raise _unreadable(path, error) from None


def _unreadable(path: Path, error: BaseException) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a readable PyTorch checkpoint ({_short_reason(error)}); "
        "the file is probably truncated or not a checkpoint: delete it and download it again "
        "(`iabn-zoo download NAME --force`)."
    )


def _short_reason(error: BaseException) -> str:
    """One line of why torch could not read a file: the unpickler's own diagnosis rather than its advice text."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).splitlines() if line.strip()]
    diagnosis = [line for line in lines if "WeightsUnpickler error" in line]
    return f"{type(error).__name__}: {(diagnosis or lines or [''])[0][:160]}"


def _foreign_global(error: BaseException) -> str | None:
    """The callable a refused pickle asked for, when it names a real (already imported) object; None for garbage.

    A truncated or random file also trips the weights-only unpickler, with names that resolve to nothing
    ("torch.Floa"); only modules already in `sys.modules` are consulted, so nothing is imported to decide.
    """
    match = re.search(r"GLOBAL (\S+) (?:was not an allowed global|whose module \S+ is blocked)", str(error))
    if match is None:
        return None
    module_name, _, attribute = match.group(1).rpartition(".")
    module = sys.modules.get(module_name or "builtins")
    return match.group(1) if module is not None and hasattr(module, attribute) else None


def normalise(checkpoint: Any, *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of an unpickled checkpoint with keys as our modules name them, ready for strict loading."""
    tensors = flatten_tensors(extract_state(checkpoint, source=source), source=source)
    if not tensors:
        raise CheckpointError(f"{source} holds no tensors; it is not a model checkpoint.")
    tensors = unwrap_norm_layers(tensors)
    return fill_num_batches_tracked(tensors)


def extract_state(checkpoint: Any, *, source: str) -> Mapping[str, Any]:
    """The model part of a checkpoint: `state_dict` of a training snapshot, or the dict itself when it is one."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{source} holds a {type(checkpoint).__name__}, not a dict of tensors; "
                              "save `model.state_dict()` (or a dict holding it under 'state_dict').")
    for key in STATE_DICT_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            return checkpoint[key]
    return checkpoint


def flatten_tensors(state: Mapping[str, Any], *, source: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """Nested dicts (the Vistas `body`/`head`/`cls`) to dotted keys, `module.` prefixes stripped at every level."""
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = prefix + _strip_data_parallel(str(key))
        if isinstance(value, torch.Tensor):
            tensors[name] = value
        elif isinstance(value, Mapping):
            tensors.update(flatten_tensors(value, source=source, prefix=name + "."))
        else:
            raise CheckpointError(f"{source}: entry {name!r} is a {type(value).__name__}, not a tensor; "
                                  "the state dict must hold tensors only.")
    return tensors


def _strip_data_parallel(key: str) -> str:
    while key.startswith(DATA_PARALLEL_PREFIX):
        key = key[len(DATA_PARALLEL_PREFIX):]
    return key


def norm_layers(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the norm layers: every module that owns a `running_mean`."""
    suffix = ".running_mean"
    return [key[: -len(suffix)] for key in tensors if key.endswith(suffix)]


def unwrap_norm_layers(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Undo the 2017 layout (`bn1.bn.weight` -> `bn1.weight`) when every norm layer of the file is wrapped that way.

    Current files always have norm layers with other names (`bn_out`, `bn1`, `map_bn`), so they are never touched.
    """
    layers = norm_layers(tensors)
    if not layers or not all(layer.rpartition(".")[2] == WRAPPED_NORM_SEGMENT for layer in layers):
        return tensors
    wrappers = {layer: layer.rpartition(".")[0] for layer in layers}
    unwrapped = {}
    for key, value in tensors.items():
        owner, _, param = key.rpartition(".")
        unwrapped[f"{wrappers[owner]}.{param}" if owner in wrappers else key] = value
    return unwrapped


def fill_num_batches_tracked(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add the `num_batches_tracked` counter (0) that files written before PyTorch 0.4.1 lack."""
    for layer in norm_layers(tensors):
        tensors.setdefault(f"{layer}.num_batches_tracked", torch.tensor(0, dtype=torch.long))
    return tensors
