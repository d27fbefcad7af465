"""Where a segmentation network's backbone weights come from: a registered classification checkpoint (by weights
name, or the backbone architecture's name for its default weights) or a classification RUN directory of ours.

This module only finds and reads the tensors, with what the backbone must be built with to take them (the
checkpoint's norm mode, activation and other architecture options); the front door builds and loads.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch

from ..errors import InvalidArgumentError
from .catalog import default_weights_for, get_weights, is_weights, weights_for_arch
from .loading import load_weights_state_dict
from .run_reader import is_run_dir, read_run, run_state_dict

DEFAULT = "default"
NONE_VALUES = (None, "none")
NORM_OPTIONS = ("bn_mode", "activation", "activation_param")
NOT_BACKBONE_OPTIONS = NORM_OPTIONS + ("num_classes", "features_only", "dilation", "output_stride")


@dataclass(frozen=True)
class BackboneSource:
    """Backbone tensors to load: `name` for messages, the norm layers they were trained with, the backbone's other
    architecture options, and how to read them (`read(progress)`: downloads a registered file if needed)."""

    name: str
    bn_mode: str
    activation: dict[str, Any]
    backbone_kwargs: dict[str, Any]
    read: Callable[[bool], dict[str, torch.Tensor]]


def backbone_source(backbone: str, backbone_weights: Any) -> BackboneSource | None:
    """The source `backbone_weights` names for classification architecture `backbone`: a weights name, the
    backbone's own name (its default weights), a classification RUN directory, "default" (the default weights,
    else None with a warning) or None / "none" (None: random initialisation)."""
    if backbone_weights in NONE_VALUES:
        return None
    if backbone_weights == DEFAULT:
        if not weights_for_arch(backbone):
            warnings.warn(f"{backbone} has no published weights: the backbone starts from random weights "
                          "(pass backbone_weights=RUN_DIR to start from a classifier you fine-tuned)", stacklevel=3)
            return None
        return _registered(backbone, default_weights_for(backbone).name)
    if not isinstance(backbone_weights, (str, os.PathLike)):
        raise InvalidArgumentError(f"backbone_weights must be a weights name, an architecture, a RUN directory or "
                                   f"'none', got {type(backbone_weights).__name__}")
    text = os.fspath(backbone_weights)
    if text == backbone:
        return _registered(backbone, default_weights_for(backbone).name)
    if is_weights(text):
        return _registered(backbone, text)
    if is_run_dir(text):
        return _run(backbone, Path(text))
    return _unknown(backbone, text)


def _registered(backbone: str, name: str) -> BackboneSource:
    weights = get_weights(name)
    if weights.task != "classification" or weights.arch != backbone:
        raise InvalidArgumentError(
            f"backbone_weights={name!r} are {weights.task} weights of {weights.arch}; this network's backbone is "
            f"{backbone}: give classification weights of {backbone} (`iabn-zoo list {backbone}* --pretrained`)")
    return BackboneSource(name, _load_mode(weights.arch_kwargs.get("bn_mode", "inplace")),
                          _activation(weights.arch_kwargs), _backbone_kwargs(weights.arch_kwargs),
                          lambda progress: load_weights_state_dict(weights, progress=progress))


def _run(backbone: str, run_dir: Path) -> BackboneSource:
    info = read_run(run_dir)
    if info.task != "classification" or info.arch != backbone:
        raise InvalidArgumentError(
            f"backbone_weights={str(run_dir)!r} is a {info.task} run of {info.arch}; this network's backbone is "
            f"{backbone}: give a classification run fine-tuned from {backbone}")
    return BackboneSource(str(run_dir), _load_mode(info.bn_mode), _activation(info.arch_kwargs),
                          _backbone_kwargs(info.arch_kwargs), lambda progress: run_state_dict(info))


def _unknown(backbone: str, text: str) -> NoReturn:
    if Path(text).exists():
        raise InvalidArgumentError(f"backbone_weights={text!r} is not a run directory (it has no config.json); "
                                   "pass the --out folder of `iabn-zoo finetune`")
    raise InvalidArgumentError(
        f"backbone_weights={text!r} is neither weights of {backbone} nor a run directory; give a weights name "
        f"(`iabn-zoo list {backbone}* --pretrained`), {backbone!r} for its default weights, a classification RUN "
        "directory, or 'none' for random initialisation")


def _load_mode(trained_mode: str) -> str:
    return "inplace" if trained_mode == "sync" else trained_mode  # sync statistics load as in-place layers


def _activation(arch_kwargs: dict[str, Any]) -> dict[str, Any]:
    return {key: arch_kwargs[key] for key in ("activation", "activation_param") if key in arch_kwargs}


def _backbone_kwargs(arch_kwargs: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in arch_kwargs.items() if key not in NOT_BACKBONE_OPTIONS}
