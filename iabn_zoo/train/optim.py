"""What fine-tuning optimises and how fast: frozen stages, parameter groups, the optimizer, the learning-rate schedule.

Learning-rate schedules are evaluated per iteration: with t the optimizer steps done and T the total of the run,
`cosine` scales the base rate by (1 + cos(pi t / T)) / 2, `linear` by 1 - t / T, and `step` by gamma ** (epoch //
step_epochs). Weight decay applies only to tensors with two or more dimensions (convolution and linear weights),
never to norm parameters or biases.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from ..errors import bad_argument
from .config import FinetuneConfig


def stage_modules(model: nn.Module, count: int) -> list[nn.Module]:
    """The modules that compute the first `count` stages of a zoo network (from its feature_info): the stages
    and everything before them, such as the stem."""
    info = getattr(model, "feature_info", None)
    if count == 0:
        return []
    if not info:
        raise bad_argument("freeze_stages", f"must be 0: {type(model).__name__} lists no stages")
    if count > len(info):
        raise bad_argument("freeze_stages", f"must be at most {len(info)} for this network "
                                            f"(stages: {', '.join(i.module for i in info)}), got {count}")
    modules, parent = [], model
    for name in info[count - 1].module.split("."):  # a nested stage (`body.mod3`): what precedes it at each level
        children = [child for child, _ in parent.named_children()]
        modules += [parent.get_submodule(child) for child in children[:children.index(name)]]
        parent = parent.get_submodule(name)
    return modules + [parent]


def freeze(modules: list[nn.Module]) -> None:
    """Stop training these modules: no gradients, and norm statistics kept as they are (eval mode)."""
    for module in modules:
        module.requires_grad_(False)
        module.eval()


def parameter_groups(model: nn.Module, cfg: FinetuneConfig) -> list[dict[str, Any]]:
    """Optimizer groups: backbone / classifier, each split into decayed (>= 2-D) and not decayed tensors."""
    classifier_ids = {id(p) for p in model.get_classifier().parameters()} if hasattr(model, "get_classifier") \
        else set()
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for param in model.parameters():
        if param.requires_grad:
            groups.setdefault((id(param) in classifier_ids, param.ndim >= 2), []).append(param)
    result = []
    for (is_classifier, decayed), params in sorted(groups.items()):
        lr = cfg.lr * (cfg.classifier_lr_mult if is_classifier else 1.0)
        result.append({"params": params, "lr": lr, "base_lr": lr,
                       "weight_decay": cfg.weight_decay if decayed else 0.0})
    if not result:
        raise bad_argument("freeze_stages", "freezes every parameter: lower it")
    return result


def make_optimizer(model: nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov by default) or AdamW over the parameter groups."""
    groups = parameter_groups(model, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_factor(cfg: FinetuneConfig, step: int, steps_per_epoch: int) -> float:
    """The schedule's multiplier of the base learning rate at optimizer step `step` (0-based)."""
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * step / total))
    if cfg.schedule == "linear":
        return 1 - step / total
    step_epochs = cfg.step_epochs or max(1, cfg.epochs // 3)
    return cfg.gamma ** ((step // steps_per_epoch) // step_epochs)


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Scale every group's base rate by `factor`; returns the backbone's rate."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return optimizer.param_groups[0]["lr"]
