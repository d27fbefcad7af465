"""The front door: list the names the zoo knows and build a model from an architecture or a weights name."""

from __future__ import annotations

import fnmatch
import inspect
from typing import Any

import torch.nn as nn

from .errors import InvalidArgumentError, UnknownNameError
from .models._registry import get_arch, is_arch, list_archs
from .train.runs import create_from_run, is_run_dir
from .weights.catalog import Weights, get_weights, is_weights, list_weights

BN_MODES = ("standard", "inplace", "sync")


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Architecture and weights names matching `pattern`; with `pretrained=True` only those with published weights."""
    weights_names = list_weights("*")
    archs_with_weights = {get_weights(name).arch for name in weights_names}
    names = set(weights_names) | (archs_with_weights if pretrained else set(list_archs()))
    return sorted(name for name in names if fnmatch.fnmatch(name, pattern))


def resolve_weights(name: str) -> Weights | None:
    """The weights entry `name` refers to, None for a bare architecture; unknown names raise with suggestions."""
    if is_weights(name):
        return get_weights(name)
    if is_arch(name):
        return None
    raise UnknownNameError("model", name, list_archs() + list_weights())


def default_weights_for(arch: str) -> Weights:
    """The best published weights (highest top-1) of an architecture, for `create_model(arch, pretrained=True)`."""
    candidates = [get_weights(n) for n in list_weights() if get_weights(n).arch == arch]
    if not candidates:
        raise InvalidArgumentError(
            f"architecture {arch!r} has no published weights; `iabn-zoo list --pretrained` shows the ones that do"
        )
    return max(candidates, key=lambda w: float(w.metrics.get("top1", w.metrics.get("miou", 0.0))))


def create_model(
    name: str,
    *,
    pretrained: bool = False,
    num_classes: int | None = None,
    bn_mode: str | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Build architecture or weights `name`; `pretrained=True` downloads, verifies and loads the published weights.

    A `num_classes` other than the checkpoint's keeps the backbone and gives a freshly initialised classifier;
    `bn_mode` overrides the mode the weights were trained with through the exact conversions of `convert_norm`.
    """
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 0):
        raise InvalidArgumentError(f"num_classes must be an integer >= 0, got {num_classes!r}")
    if bn_mode is not None and bn_mode not in BN_MODES:
        raise InvalidArgumentError(f"bn_mode must be one of {', '.join(BN_MODES)}, got {bn_mode!r}")
    if not is_arch(name) and not is_weights(name) and is_run_dir(name):  # a fine-tuning RUN directory
        return create_from_run(name, pretrained=pretrained, num_classes=num_classes, bn_mode=bn_mode)
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
    from .layers.norm_act import convert_norm
    from .weights.pretrained import build_pretrained

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
