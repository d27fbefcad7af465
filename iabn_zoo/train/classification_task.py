"""The classification task (the contract is `train.task.Task`): the ImageFolder splits and loaders, cross-entropy,
the top-1 / top-5 tallies of training and validation, and what a run reports and records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.transforms import AUGMENT_PRESETS, IMAGENET_MEAN, IMAGENET_STD, eval_scale_for
from ..errors import bad_argument
from ..tasks.accuracy import TOPK, Tally, count_correct
from .config import FinetuneConfig
from .loaders import make_loaders, open_splits, training_sampler
from .processes import Processes, all_reduce_tally
from .task import random_targets, register_task


class ClassificationTrainMeter:
    """Loss and top-1 of the training batches."""

    def __init__(self, criterion: nn.Module):
        self.criterion = criterion
        self.tally = Tally()

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the batch, tallied with its top-1 hits."""
        loss = self.criterion(logits.float(), targets)
        self.tally.add(loss.item() * targets.numel(), *count_correct(logits.detach().float(), targets),
                       targets.numel())
        return loss

    def postfix(self) -> dict[str, str]:
        return {"loss": f"{self.tally.loss:.3f}", "acc": f"{self.tally.top1_percent:.1f}"}

    def images(self) -> int:
        return self.tally.images

    def finish(self, procs: Processes) -> tuple[dict[str, Any], int]:
        total = all_reduce_tally(self.tally, procs)
        return {"train_loss": total.loss, "train_top1": total.top1_percent}, total.images


class ClassificationValMeter:
    """Loss, top-1 and top-5 over the validation set."""

    def __init__(self, criterion: nn.Module, num_classes: int):
        self.criterion = criterion
        self.num_classes = num_classes
        self.tally = Tally()

    def add(self, logits: torch.Tensor, targets: torch.Tensor, images: torch.Tensor) -> None:
        logits = logits.float()
        self.tally.add(self.criterion(logits, targets).item() * targets.numel(), *count_correct(logits, targets),
                       targets.numel())

    def finish(self, procs: Processes) -> tuple[dict[str, Any], int]:
        total = all_reduce_tally(self.tally, procs)
        top5 = total.top5_percent if self.num_classes > TOPK else None  # of TOPK classes or fewer: always 100%
        return {"val_loss": total.loss, "val_top1": total.top1_percent, "val_top5": top5,
                "val_images": total.images}, total.images


@register_task
class ClassificationTask:
    """Image classification on the ImageFolder splits of DATA."""

    name = "classification"
    defaults = {"image_size": 224, "augment": "imagenet", "schedule": "cosine"}
    own_options: dict[str, Any] = {}
    auto_sizes = ("batch_size",)
    columns = ("epoch", "train_loss", "train_top1", "val_top1", "val_top5", "lr", "images_per_s")
    summary = ("val_top1", "val_top5")
    scalars = {"loss/train": "train_loss", "loss/val": "val_loss", "top1/train": "train_top1", "top1/val": "val_top1",
               "top5/val": "val_top5", "learning_rate": "lr", "images_per_second": "images_per_s"}
    score_curve = ("top-1 (%)", ("train_top1", "val_top1"))

    @staticmethod
    def check_options(cfg: Any, min_image_size: int) -> None:
        """A square crop side, an augmentation preset."""
        if not (isinstance(cfg.image_size, int) and not isinstance(cfg.image_size, bool)
                and cfg.image_size >= min_image_size):
            raise bad_argument("image_size", f"must be an integer >= {min_image_size} for classification (auto "
                                             f"chooses segmentation crops), got {cfg.image_size!r}")
        if cfg.augment not in AUGMENT_PRESETS:
            raise bad_argument("augment", f"must be one of {', '.join(AUGMENT_PRESETS)}, got {cfg.augment!r}")

    @staticmethod
    def ledger_loss(output: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the logits against random classes."""
        return F.cross_entropy(output.float(), random_targets(output.shape[1], output.shape[:1], output.device))

    @staticmethod
    def batch_bytes(batch: int, crop: tuple[int, int]) -> int:
        """float32 images and int64 labels."""
        return batch * (3 * crop[0] * crop[1] * 4 + 8)

    def __init__(self, cfg: FinetuneConfig, procs: Processes):
        self.cfg = cfg
        self.procs = procs
        self.train_set, self.val_set = open_splits(cfg)  # checks the data before anything is written
        self.classes = list(self.train_set.classes)
        self.criterion = nn.CrossEntropyLoss()

    def batch_limit(self) -> int:
        """The most images one rank's batch can hold: its share of the training set."""
        return len(training_sampler(self.train_set, self.cfg, self.procs))

    def arch_options(self, arch: str, arch_kwargs: dict[str, Any]) -> dict[str, Any]:
        """Classification sets no architecture option."""
        return {}

    def start(self) -> None:
        """The loaders, at the run's final batch size."""
        loaders = make_loaders(self.cfg, self.procs, self.train_set, self.val_set)
        self.train_loader, self.val_loader = loaders.train, loaders.val

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order and augmentation."""
        self.train_loader.sampler.set_epoch(epoch)
        self.train_loader.dataset.set_epoch(epoch)

    def preprocessing(self) -> dict[str, Any]:
        """ImageNet's mean and std, the evaluation resize matching the augmentation, the crop."""
        return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                "resize": eval_scale_for(self.cfg.augment, self.cfg.image_size), "crop": self.cfg.image_size,
                "interpolation": "bilinear"}

    def run_facts(self) -> dict[str, Any]:
        """Classification records nothing of its own."""
        return {}

    def train_meter(self) -> ClassificationTrainMeter:
        return ClassificationTrainMeter(self.criterion)

    def val_meter(self) -> ClassificationValMeter:
        return ClassificationValMeter(self.criterion, len(self.classes))

    def epoch_pictures(self, meter: ClassificationValMeter) -> list:
        """Classification shows no validation pictures."""
        return []

    def log_pictures(self, pictures: list) -> list:
        return []

    def write_samples(self, run_dir: Path, pictures: list) -> None:
        """Classification writes no samples."""
