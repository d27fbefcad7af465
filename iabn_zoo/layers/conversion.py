"""Exact conversions between the norm modes: InPlace-ABN's scale is |w| + eps, so inplace -> standard is always
exact (w' = |w| + eps) and standard -> inplace only where every w >= eps."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from ..errors import InvalidArgumentError
from .activations import check_activation
from .kernels import resolve_backend
from .norm_act import ABN, LAYER_CLASSES, InPlaceABN, InPlaceABNSync, check_bn_mode


def blocked_channels(layer: ABN, eps: float) -> int:
    """How many channels of a standard layer have no exact InPlace-ABN equivalent (|w'| + eps = w needs w >= eps)."""
    return int((layer.weight.detach() < eps).sum())


def check_convertible(layers: list[tuple[str, ABN]], bn_mode: str) -> None:
    """Refuse, before touching anything, a conversion to InPlace-ABN that would change what the network computes."""
    if bn_mode == "standard":
        return
    standard = [(name, layer) for name, layer in layers if layer.bn_mode == "standard"]
    for name, layer in standard:
        try:
            check_activation(layer.activation, layer.activation_param, bn_mode)
        except InvalidArgumentError as error:
            raise InvalidArgumentError(f"cannot convert layer {name or '<root>'!r} to {bn_mode}: {error}") from None
    blocked = [(name, count) for name, layer in standard if (count := blocked_channels(layer, layer.eps))]
    if blocked:
        total = sum(count for _, count in blocked)
        shown = ", ".join(f"{name or '<root>'} ({count})" for name, count in blocked[:5])
        more = f" and {len(blocked) - 5} more" if len(blocked) > 5 else ""
        raise InvalidArgumentError(
            f"cannot convert to bn_mode {bn_mode!r} exactly: {total} channel(s) in {len(blocked)} layer(s) have "
            f"weight < eps, which InPlace-ABN's scale |w| + eps cannot represent: {shown}{more}. Keep "
            f"bn_mode='standard', or fine-tune in bn_mode={bn_mode!r} from a fresh initialisation.")


def convert_layer(layer: ABN, bn_mode: str, backend: str | None, group: Any) -> ABN:
    """One layer in another mode computing the same function (the caller has checked it is exact)."""
    if layer.bn_mode == bn_mode:
        if backend is not None and isinstance(layer, InPlaceABN):
            layer.backend = resolve_backend(backend)
        if group is not None and isinstance(layer, InPlaceABNSync):
            layer.group = group
        return layer
    options: dict[str, Any] = dict(activation=layer.activation, activation_param=layer.activation_param,
                                   momentum=layer.momentum, eps=layer.eps)
    if bn_mode != "standard":
        options["backend"] = backend if backend is not None else getattr(layer, "backend", None)
    if bn_mode == "sync":
        options["group"] = group if group is not None else getattr(layer, "group", None)
    new = LAYER_CLASSES[bn_mode](layer.num_features, **options)
    new.to(device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        weight = layer.weight.detach()
        if layer.bn_mode != "standard" and bn_mode == "standard":
            weight = weight.abs() + layer.eps
        elif layer.bn_mode == "standard":
            weight = weight - layer.eps
        new.weight.copy_(weight)
        new.bias.copy_(layer.bias)
        new.running_mean.copy_(layer.running_mean)
        new.running_var.copy_(layer.running_var)
        new.num_batches_tracked.copy_(layer.num_batches_tracked)
    new.weight.requires_grad_(layer.weight.requires_grad)
    new.bias.requires_grad_(layer.bias.requires_grad)
    return new.train(layer.training)


def convert_norm(module: nn.Module, bn_mode: str, *, backend: str | None = None, group: Any = None) -> nn.Module:
    """Switch every norm-act layer of `module` to `bn_mode` without changing what it computes, in place.

    inplace <-> sync is exact; inplace -> standard uses w' = |w| + eps; standard -> inplace needs w >= eps in every
    channel and otherwise raises, changing nothing. Returns `module` (a new layer when `module` is one itself).
    """
    check_bn_mode(bn_mode)
    if backend is not None:
        resolve_backend(backend)
    layers = [(name, m) for name, m in module.named_modules(remove_duplicate=False) if isinstance(m, ABN)]
    check_convertible(layers, bn_mode)
    converted: dict[int, ABN] = {}
    for name, layer in layers:
        if id(layer) not in converted:
            converted[id(layer)] = convert_layer(layer, bn_mode, backend, group)
        new = converted[id(layer)]
        if not name:
            return new
        parent_name, _, child_name = name.rpartition(".")
        setattr(module.get_submodule(parent_name), child_name, new)
    return module
