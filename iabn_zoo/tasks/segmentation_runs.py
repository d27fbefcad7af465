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


def segmentation_network(model: str | os.PathLike[str], *, progress: bool = True
                         ) -> tuple[torch.nn.Module, list[str], dict[str, Any], int]:
    """(network in eval mode, class names, preprocessing, ignore index) of a segmentation run or weights name."""
    if is_run_dir(model):
        info = read_run(model)
        ignore_index = int(read_json(info.run_dir / CONFIG_FILE).get("ignore_index", 255))
        return load_run(model), list(info.classes), dict(info.preprocessing), ignore_index
    weights = get_weights(str(model))
    network = create_model(weights.name, pretrained=True, progress=progress).eval()
    return network, class_names(weights.labels or "vistas", weights.num_classes), dict(weights.preprocessing), 255


def run_predictor(run_dir: str | os.PathLike[str], options: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network of a segmentation run and the predictor options its preprocessing gives (`options` override)."""
    if run_task(run_dir) != "segmentation":
        raise InvalidArgumentError(f"{run_dir} is a classification run; `iabn-zoo predict` classifies with it")
    network, _, prep, _ = segmentation_network(run_dir)
    defaults = {"mean": prep["mean"], "std": prep["std"], "long_side": prep.get("long_side"),
                "interpolation": prep.get("interpolation", "bilinear")}
    return network, {**defaults, **options}


def run_segment_defaults(run_dir: str | os.PathLike[str]) -> int | None:
    """The long side `segment` resizes images to for a run: the one it was trained at (None: keep the size)."""
    if run_task(run_dir) != "segmentation":
        raise InvalidArgumentError(f"{run_dir} is a classification run; `iabn-zoo predict` classifies with it",
                                   parameters=("weights",))
    return read_run(run_dir).preprocessing.get("long_side")


def run_class_table(run_dir: str | os.PathLike[str], output: str) -> tuple[list[Color], list[str]]:
    """Colours (Vistas's for its classes, else generated) and names of a run's classes, as `segment` shows them."""
    classes = list(read_run(run_dir).classes)
    return (class_palette(classes) if output in ("palette", "overlay") else []), classes
