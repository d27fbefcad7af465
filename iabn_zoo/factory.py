"""The front door: list the names the zoo knows and build a model from an architecture, a weights name or a
fine-tuning RUN directory. Everything above (training, tasks, deploy, the CLI) builds networks through here.
"""

from __future__ import annotations

import fnmatch
import inspect
import os
from typing import Any

import torch
import torch.nn as nn

from .errors import CheckpointError, InvalidArgumentError, UnknownNameError
from .layers import BN_MODES, convert_norm
from .models._registry import get_arch, is_arch, list_archs
from .weights.catalog import Weights, default_weights_for, get_weights, is_weights, list_weights
from .weights.loading import build_pretrained
from .weights.run_reader import RunInfo, is_run_dir, read_run, run_state_dict


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Architecture and weights names matching the fnmatch `pattern` (case ignored); with `pretrained=True` only
    weights names and the architectures that have published weights (which stand for their default weights)."""
    weights_names = list_weights("*")
    archs_with_weights = {get_weights(name).arch for name in weights_names}
    names = set(weights_names) | (archs_with_weights if pretrained else set(list_archs()))
    wanted = pattern.lower()
    return sorted(name for name in names if fnmatch.fnmatchcase(name.lower(), wanted))


def resolve_weights(name: str) -> Weights | None:
    """The weights entry `name` refers to, None for a bare architecture; unknown names raise with suggestions."""
    if is_weights(name):
        return get_weights(name)
    if is_arch(name):
        return None
    raise UnknownNameError("model", name, list_archs() + list_weights())


def create_model(
    name: str,
    *,
    pretrained: bool | None = None,
    num_classes: int | None = None,
    bn_mode: str | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Build architecture or weights `name`; `pretrained=True` downloads, verifies and loads the published weights
    (a name without any is refused), left out or False builds random weights. A fine-tuning RUN directory always
    means its trained weights unless `pretrained=False` asks for a fresh network of its architecture.

    A `num_classes` other than the checkpoint's keeps the backbone and gives a freshly initialised classifier;
    `bn_mode` overrides the mode the weights were trained with through the exact conversions of `convert_norm`.
    """
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 0):
        raise InvalidArgumentError(f"num_classes must be an integer >= 0, got {num_classes!r}")
    if bn_mode is not None and bn_mode not in BN_MODES:
        raise InvalidArgumentError(f"bn_mode must be one of {', '.join(BN_MODES)}, got {bn_mode!r}")
    if not is_arch(name) and not is_weights(name) and is_run_dir(name):  # a fine-tuning RUN directory
        return _create_from_run(name, pretrained=pretrained is not False, num_classes=num_classes, bn_mode=bn_mode)
    weights = resolve_weights(name)
    if weights is None and pretrained:
        weights = default_weights_for(name)
    if weights is None:
        return _build(name, {}, bn_mode=bn_mode, num_classes=num_classes, **kwargs)
    if not pretrained:
        return _build(weights.arch, weights.arch_kwargs, bn_mode=bn_mode, num_classes=num_classes, **kwargs)
    return _build_pretrained(weights, bn_mode=bn_mode, num_classes=num_classes, progress=progress, **kwargs)


def _build(arch: str, arch_kwargs: dict[str, Any], *, bn_mode: str | None, num_classes: int | None, **kwargs: Any):
    options = {**arch_kwargs, **kwargs}
    if bn_mode is not None:
        options["bn_mode"] = bn_mode
    if num_classes is not None:
        options["num_classes"] = num_classes
    constructor = get_arch(arch)
    _check_options(arch, constructor, options)
    return constructor(**options)


def _check_options(arch: str, constructor: Any, options: dict[str, Any]) -> None:
    """Reject keyword arguments the architecture does not take, naming them and the ones it does."""
    parameters = inspect.signature(constructor).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise InvalidArgumentError(
            f"{arch} takes no argument {', '.join(map(repr, unknown))}; it takes {', '.join(parameters)}"
        )


def _build_pretrained(weights: Weights, *, bn_mode: str | None, num_classes: int | None, progress: bool, **kwargs):
    list_archs()  # import the family modules before building on the meta device
    trained_mode = weights.arch_kwargs.get("bn_mode", "inplace")
    load_mode = "inplace" if trained_mode == "sync" else trained_mode
    model = build_pretrained(
        lambda: _build(weights.arch, weights.arch_kwargs, bn_mode=load_mode, num_classes=weights.num_classes, **kwargs),
        weights, progress=progress)
    if num_classes is not None and num_classes != weights.num_classes:
        model.reset_classifier(num_classes)
    if bn_mode is not None and bn_mode != load_mode:
        model = convert_norm(model, bn_mode)
    return model


def build_run_model(info: RunInfo, bn_mode: str | None = None) -> nn.Module:
    """A run's network freshly initialised, in the norm mode it was trained with (or `bn_mode`)."""
    options = {k: v for k, v in info.arch_kwargs.items() if k not in ("bn_mode", "num_classes")}
    return create_model(info.arch, num_classes=info.num_classes, bn_mode=bn_mode or info.bn_mode, **options)


def load_run(run_dir: str | os.PathLike[str], *, bn_mode: str | None = None) -> nn.Module:
    """The fine-tuned network of `run_dir` with its latest weights, in eval mode; `model.classes` names its outputs.

    `bn_mode` converts the norm layers exactly after loading (e.g. "standard" for plain BatchNorm inference)."""
    info = read_run(run_dir)
    model = build_run_model(info)
    try:
        model.load_state_dict(run_state_dict(info), strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{info.run_dir} does not fit {info.arch}: {error}") from None
    if bn_mode is not None and bn_mode != info.bn_mode:
        model = convert_norm(model, bn_mode)
    model.classes = list(info.classes)
    return model.eval()


def _create_from_run(run_dir: str | os.PathLike[str], *, pretrained: bool, num_classes: int | None,
                     bn_mode: str | None) -> nn.Module:
    """`create_model(RUN_DIR, ...)`: the run's network with its trained weights (or fresh ones with
    pretrained=False), a new classifier when `num_classes` differs, norm layers converted to `bn_mode`."""
    info = read_run(run_dir)
    model = load_run(run_dir, bn_mode=bn_mode).train() if pretrained else build_run_model(info, bn_mode)
    if num_classes is not None and num_classes != info.num_classes:
        model.reset_classifier(num_classes)
    return model


def count_parameters(name: str) -> int:
    """Parameters of the network `name` builds, counted on the meta device (nothing allocated or initialised)."""
    list_archs()  # import the family modules outside the meta context
    with torch.device("meta"):
        model = create_model(name)
    return sum(parameter.numel() for parameter in model.parameters())
