"""Segmentation networks as sources of predictions: a segmentation fine-tuning RUN directory (its latest weights,
classes, preprocessing, ignore index) or registered segmentation weights; what `evaluate` and `segment` load."""

from __future__ import annotations

import os
from typing import Any

import torch

from ..data.labels import class_names
from ..errors import InvalidArgumentError
from ..factory import create_model, load_run
from ..weights.catalog import get_weights, is_weights
from ..weights.run_reader import CONFIG_FILE, is_run_dir, read_json, read_run
from .palette import Color, class_palette


def run_task(run_dir: str | os.PathLike[str]) -> str:
    """The task a run directory trained ("classification" for runs written before segmentation existed)."""
    return read_run(run_dir).task


def is_segmentation_model(model: str | os.PathLike[str]) -> bool:
    """Whether MODEL is a segmentation RUN directory or registered segmentation weights."""
    if is_run_dir(model):
        return run_task(model) == "segmentation"
    return is_weights(str(model)) and get_weights(str(model)).task == "segmentation"


def segmentation_classes(model: str | os.PathLike[str]) -> tuple[list[str], int]:
    """(class names, ignore index) of a segmentation run or weights name (nothing downloaded)."""
    if is_run_dir(model):
        info = read_run(model)
        return list(info.classes), int(read_json(info.run_dir / CONFIG_FILE).get("ignore_index", 255))
    weights = get_weights(str(model))
    return class_names(weights.labels or "vistas", weights.num_classes), 255


def segmentation_network(model: str | os.PathLike[str], *, progress: bool = True
                         ) -> tuple[torch.nn.Module, list[str], dict[str, Any], int]:
    """(network in eval mode, class names, preprocessing, ignore index) of a segmentation run or weights name."""
    classes, ignore_index = segmentation_classes(model)
    if is_run_dir(model):
        return load_run(model), classes, dict(read_run(model).preprocessing), ignore_index
    weights = get_weights(str(model))
    network = create_model(weights.name, pretrained=True, progress=progress).eval()
    return network, classes, dict(weights.preprocessing), ignore_index


def run_predictor(run_dir: str | os.PathLike[str], options: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network of a segmentation run and the predictor options its preprocessing gives (`options` override)."""
    if run_task(run_dir) != "segmentation":
        raise InvalidArgumentError(f"{run_dir} is a classification run; `iabn-zoo predict` classifies with it")
    network, _, prep, _ = segmentation_network(run_dir)
    defaults = {"mean": prep["mean"], "std": prep["std"], "long_side": prep.get("long_side"),
                "interpolation": prep.get("interpolation", "bilinear")}
    return network, {**defaults, **options}


def check_segmentation_run(run_dir: str | os.PathLike[str]) -> None:
    """`segment --weights RUN` takes segmentation runs only."""
    if run_task(run_dir) != "segmentation":
        raise InvalidArgumentError(f"{run_dir} is a classification run; `iabn-zoo predict` classifies with it",
                                   parameters=("weights",))


def run_class_table(run_dir: str | os.PathLike[str], output: str) -> tuple[list[Color], list[str]]:
    """Colours (Vistas's for its classes, else generated) and names of a run's classes, as `segment` shows them."""
    classes = list(read_run(run_dir).classes)
    return (class_palette(classes) if output in ("palette", "overlay") else []), classes
