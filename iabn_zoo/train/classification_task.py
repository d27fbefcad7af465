"""What the training loop asks of a task, for classification: the ImageFolder loaders, cross-entropy, and the top-1 /
top-5 tallies of training and validation.

A task gives the loop (`loop.Trainer`) its `classes`, `train_loader`, `val_loader`, `set_epoch(epoch)`, a
`train_meter()` whose `loss(logits, targets)` returns the loss to back-propagate and tallies the batch, a
`val_meter()` whose `add(logits, targets)` scores a validation batch, and `describe()` (config.json). A meter's
`postfix()` feeds the progress bar and its `finish(procs)` sums over ranks and gives (metrics record, images).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..tasks.accuracy import TOPK, Tally, count_correct
from .config import FinetuneConfig
from .loaders import make_loaders
from .model import build_model, describe_run
from .processes import Processes, all_reduce_tally


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


class ClassificationTask:
    """Image classification on the ImageFolder splits of DATA."""

    name = "classification"

    def __init__(self, cfg: FinetuneConfig, procs: Processes):
        self.cfg = cfg
        loaders = make_loaders(cfg, procs)  # checks the data before anything is written
        self.train_loader, self.val_loader, self.classes = loaders.train, loaders.val, loaders.classes
        self.criterion = nn.CrossEntropyLoss()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order and augmentation."""
        self.train_loader.sampler.set_epoch(epoch)
        self.train_loader.dataset.set_epoch(epoch)

    def describe(self) -> dict[str, Any]:
        """The config.json document of the run."""
        return describe_run(self.cfg, self.classes)

    def build_model(self, description: dict[str, Any], *, resuming: bool) -> nn.Module:
        """The network to train, with its published weights unless a resume point will overwrite them."""
        model = build_model(self.cfg, description, resuming=resuming)
        if self.cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)
        return model

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
