"""Putting published weights into a network: download, read, check every key and shape, load strictly.

`build_pretrained` also skips the random initialisation the weights would overwrite: it builds the network on the
`meta` device and adopts the checkpoint's tensors as its parameters, which makes a warm `create_model(...,
pretrained=True)` several times faster than building, `torch.load` and `load_state_dict`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn

from ..errors import CheckpointError

CLASSIFIER_PREFIX = "classifier."
LISTED_KEYS = 8  # per kind of mismatch in an error message


def load_pretrained(model: nn.Module, weights: Any, progress: bool = True) -> nn.Module:
    """Load the published tensors of `weights` (a `Weights` or its name) into `model`, strictly; returns `model`."""
    from .checkpoint_reader import load_weights_state_dict

    weights = _as_weights(weights)
    state_dict = load_weights_state_dict(weights, progress=progress)
    load_checked(model, state_dict, source=weights.name)
    return model


def build_pretrained(build: Callable[[], nn.Module], weights: Any, progress: bool = True) -> nn.Module:
    """`build()` a network and load `weights` into it, without the random initialisation the weights replace."""
    from ..models._registry import list_archs
    from .checkpoint_reader import load_weights_state_dict

    weights = _as_weights(weights)
    state_dict = load_weights_state_dict(weights, progress=progress)
    list_archs()  # import the family modules now: module-level tensors must not land on the meta device
    try:
        with torch.device("meta"):
            model = build()
    except (NotImplementedError, RuntimeError):  # a constructor that needs real data: initialise normally
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


def _as_weights(weights: Any) -> Any:
    from .catalog import get_weights

    return get_weights(weights) if isinstance(weights, str) else weights
