"""How config.json describes a segmentation run, and how the run's network is built.

Besides the options and classes: "task": "segmentation", the architecture and its arguments (output stride and
class count included, so the network is rebuilt without fetching backbone weights), the ignore index, and the
preprocessing: mean, std, the crop trained at, and `long_side`, the long side images are resized to for inference.
The network saw images at their own size times a random scale in `scale_range`, so that long side is the typical
(median) long side of the validation images times the geometric mean of the scale range (1 for 0.5..2):
`iabn-zoo segment --weights RUN` then feeds 64-px scenes at 64 px, not at the Vistas network's 2048.
"""

from __future__ import annotations

import inspect
import math
import statistics
from dataclasses import asdict
from typing import Any

import torch
import torch.nn as nn

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..factory import create_model, resolve_weights
from ..models import get_arch
from ..models.deeplabv3 import backbone_of
from .config import FinetuneConfig
from .model import training_bn_mode
from .task_options import crop_hw

SIZE_SAMPLE = 8  # validation images whose size sets the inference long side


def architecture_default(arch: str, name: str) -> Any:
    """The default of keyword `name` of architecture `arch`'s constructor (None when it takes no such keyword)."""
    parameter = inspect.signature(get_arch(arch)).parameters.get(name)
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def segmentation_arch_kwargs(cfg: FinetuneConfig, num_classes: int) -> tuple[str, dict[str, Any]]:
    """(architecture, its keyword arguments) of the run's network, as config.json records them."""
    weights = resolve_weights(cfg.model)
    arch = weights.arch if weights is not None else cfg.model
    kwargs = {k: v for k, v in (weights.arch_kwargs if weights is not None else {}).items() if k != "bn_mode"}
    stride = cfg.output_stride if cfg.output_stride is not None else kwargs.get(
        "output_stride", architecture_default(arch, "output_stride"))
    if stride is not None:
        kwargs["output_stride"] = stride
    return arch, {**kwargs, "num_classes": num_classes}


def inference_long_side(dataset: torch.utils.data.Dataset, scale_range: list[float]) -> int | None:
    """The median long side of the first validation masks, times the geometric mean of the training scales."""
    sides = [max(dataset[index][1].shape[-2:]) for index in range(min(SIZE_SAMPLE, len(dataset)))]
    if not sides:
        return None
    return max(1, round(statistics.median(sides) * math.sqrt(scale_range[0] * scale_range[1])))


def describe_segmentation_run(cfg: FinetuneConfig, classes: list[str], ignore_index: int,
                              long_side: int | None) -> dict[str, Any]:
    """The config.json document of a segmentation run."""
    weights = resolve_weights(cfg.model)
    arch, arch_kwargs = segmentation_arch_kwargs(cfg, len(classes))
    height, width = crop_hw(cfg.image_size)
    return {
        "task": "segmentation",
        "config": asdict(cfg),
        "classes": classes,
        "arch": arch,
        "arch_kwargs": arch_kwargs,
        "bn_mode": training_bn_mode(cfg, weights),
        "source_weights": weights.name if weights is not None else None,
        "backbone_weights": cfg.backbone_weights,
        "ignore_index": ignore_index,
        "preprocessing": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "crop": [height, width],
                          "long_side": long_side, "interpolation": "bilinear"},
    }


def build_segmentation_model(cfg: FinetuneConfig, description: dict[str, Any], *, resuming: bool) -> nn.Module:
    """The network to train: segmentation weights with a new classifier when the class count differs, or the
    architecture with its backbone initialised as `backbone_weights` says; on resume nothing is fetched (the resume
    point overwrites every weight)."""
    weights = resolve_weights(cfg.model)
    pretrained = (weights is not None) if cfg.pretrained is None else cfg.pretrained
    arch = description["arch"]
    options = {k: v for k, v in description["arch_kwargs"].items() if k not in ("bn_mode", "num_classes")}
    if backbone_of(arch) is not None:  # deeplabv3_<backbone>
        options["backbone_weights"] = "none" if resuming or pretrained else cfg.backbone_weights
        if options["backbone_weights"] is None:
            del options["backbone_weights"]  # the backbone's default published weights
    if pretrained and not resuming:
        model = create_model(cfg.model, pretrained=True, num_classes=len(description["classes"]),
                             bn_mode=description["bn_mode"], **options)
    else:
        model = create_model(arch, num_classes=len(description["classes"]), bn_mode=description["bn_mode"],
                             **options)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model
