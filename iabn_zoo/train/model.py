"""The network a fine-tuning run trains and how config.json describes it."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch.nn as nn

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_scale_for
from ..factory import create_model, resolve_weights
from ..weights.catalog import Weights
from .config import FinetuneConfig


def training_bn_mode(cfg: FinetuneConfig, weights: Weights | None) -> str:
    """The single-process norm mode: the option, else the weights' (sync trains as inplace), else inplace."""
    if cfg.bn_mode is not None:
        return "inplace" if cfg.bn_mode == "sync" else cfg.bn_mode
    trained = weights.arch_kwargs.get("bn_mode", "inplace") if weights is not None else "inplace"
    return "inplace" if trained == "sync" else trained


def describe_run(cfg: FinetuneConfig, classes: list[str]) -> dict[str, Any]:
    """The config.json document: options, classes, and how to rebuild and feed the network."""
    weights = resolve_weights(cfg.model)
    return {
        "config": asdict(cfg),
        "classes": classes,
        "arch": weights.arch if weights is not None else cfg.model,
        "arch_kwargs": dict(weights.arch_kwargs) if weights is not None else {},
        "bn_mode": training_bn_mode(cfg, weights),
        "source_weights": weights.name if weights is not None else None,
        "preprocessing": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                          "resize": eval_scale_for(cfg.augment, cfg.image_size), "crop": cfg.image_size,
                          "interpolation": "bilinear"},
    }


def build_model(cfg: FinetuneConfig, description: dict[str, Any], *, resuming: bool) -> nn.Module:
    """The network to train: pretrained weights loaded unless a resume point will overwrite them anyway."""
    weights = resolve_weights(cfg.model)
    pretrained = (weights is not None) if cfg.pretrained is None else cfg.pretrained
    if resuming or not pretrained:
        options = {k: v for k, v in description["arch_kwargs"].items() if k not in ("bn_mode", "num_classes")}
        return create_model(description["arch"], num_classes=len(description["classes"]),
                            bn_mode=description["bn_mode"], **options)
    return create_model(cfg.model, pretrained=True, num_classes=len(description["classes"]),
                        bn_mode=description["bn_mode"])
