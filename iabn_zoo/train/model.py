"""The one skeleton every task's run is built on: which network it trains (`NetworkSpec`), how config.json describes
the run, and how the network is built for a new run or a resume.

config.json holds: "task", "config" (every option), "classes", "arch" and "arch_kwargs" (class count included, and
the options the task or the backbone weights set, so the network is rebuilt without fetching anything), "bn_mode",
"source_weights", "preprocessing" (the task's: how to feed the trained network) and the task's own fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ..factory import backbone_options, create_model, resolve_weights
from ..models.deeplabv3 import backbone_of
from ..weights.backbone import DEFAULT as DEFAULT_BACKBONE
from ..weights.catalog import Weights, default_weights_for
from .config import FinetuneConfig


def training_bn_mode(cfg: FinetuneConfig, weights: Weights | None) -> str:
    """The single-process norm mode: the option, else the weights' (sync trains as inplace), else inplace."""
    if cfg.bn_mode is not None:
        return "inplace" if cfg.bn_mode == "sync" else cfg.bn_mode
    trained = weights.arch_kwargs.get("bn_mode", "inplace") if weights is not None else "inplace"
    return "inplace" if trained == "sync" else trained


def starting_weights(cfg: FinetuneConfig) -> Weights | None:
    """The published weights the run starts from: a weights name's (unless pretrained=False), an architecture's
    default ones with pretrained=True (InvalidArgumentError when it has none), else None."""
    weights = resolve_weights(cfg.model)
    if cfg.pretrained is False:
        return None
    return default_weights_for(cfg.model) if weights is None and cfg.pretrained else weights


@dataclass(frozen=True)
class NetworkSpec:
    """The network a run trains: architecture, its arguments (class count included), norm mode, checkpointing."""

    arch: str
    arch_kwargs: dict[str, Any] = field(hash=False)
    bn_mode: str
    grad_checkpointing: bool = False

    def build(self, *, bn_mode: str | None = None, device: torch.device | str = "cpu") -> nn.Module:
        """The architecture with fresh weights (nothing fetched: the memory is the same) in training mode, in its
        norm mode or `bn_mode`, on `device` (on the meta device: shapes only)."""
        options = {k: v for k, v in self.arch_kwargs.items() if k not in ("bn_mode", "num_classes")}
        if backbone_of(self.arch) is not None:
            options["backbone_weights"] = None
        with torch.device(device):
            model = create_model(self.arch, num_classes=self.arch_kwargs["num_classes"],
                                 bn_mode=bn_mode or self.bn_mode, **options)
        model.set_grad_checkpointing(self.grad_checkpointing)
        return model.train()


def network_spec(cfg: FinetuneConfig, task: Any) -> NetworkSpec:
    """What the run of `cfg` trains on the classes `task` found: the weights' architecture and arguments (or the
    bare architecture's), the options its backbone weights need, the task's architecture options."""
    start = starting_weights(cfg)
    weights = start or resolve_weights(cfg.model)
    arch = weights.arch if weights is not None else cfg.model
    kwargs = {k: v for k, v in (weights.arch_kwargs if weights is not None else {}).items() if k != "bn_mode"}
    if start is None:  # what the backbone weights bring (their activation, backbone options)
        kwargs.update(backbone_options(arch, cfg.backbone_weights or DEFAULT_BACKBONE))
    kwargs.update(task.arch_options(arch, kwargs))
    kwargs["num_classes"] = len(task.classes)
    return NetworkSpec(arch, kwargs, training_bn_mode(cfg, weights), cfg.grad_checkpointing)


def describe_run(cfg: FinetuneConfig, task: Any, spec: NetworkSpec) -> dict[str, Any]:
    """The config.json document of the run (written with its first saved epoch)."""
    weights = starting_weights(cfg)
    return {"task": task.name, "config": asdict(cfg), "classes": list(task.classes), "arch": spec.arch,
            "arch_kwargs": dict(spec.arch_kwargs), "bn_mode": spec.bn_mode,
            "source_weights": weights.name if weights is not None else None,
            "preprocessing": task.preprocessing(), **task.run_facts()}


def build_model(cfg: FinetuneConfig, description: dict[str, Any], *, resuming: bool) -> nn.Module:
    """The network to train: the model's published weights (a new classifier when the class count differs), or the
    architecture with its backbone initialised as `backbone_weights` says; on resume nothing is fetched (the resume
    point overwrites every weight)."""
    start = starting_weights(cfg)
    options = {k: v for k, v in description["arch_kwargs"].items() if k not in ("bn_mode", "num_classes")}
    if backbone_of(description["arch"]) is not None:  # deeplabv3_<backbone>
        options["backbone_weights"] = "none" if resuming or start is not None else cfg.backbone_weights
        if options["backbone_weights"] is None:
            del options["backbone_weights"]  # the backbone's default published weights
    pretrained = start is not None and not resuming
    model = create_model(start.name if pretrained else description["arch"], pretrained=pretrained,
                         num_classes=len(description["classes"]), bn_mode=description["bn_mode"], **options)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model
