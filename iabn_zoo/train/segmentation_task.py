"""What the training loop asks of a task (see `classification_task`), for semantic segmentation: the mask data sets,
the pixel loss, and mIoU / per-class IoU / pixel accuracy from one confusion matrix.

Training: the network's logits (at 1/output_stride) are resized bilinearly to the crop before the loss. The loss of a
step is the sum of the pixel losses of this rank's batch divided by the normaliser (pixels kept, or their class
weights) summed over all ranks, times the number of ranks: DistributedDataParallel averages the ranks' gradients,
so the job takes exactly the step one process takes on the union of the ranks' batches, whatever their sizes.
Validation: each image at full resolution, logits resized bilinearly to its mask's size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from ..errors import bad_argument
from ..tasks.confusion import ConfusionMatrix
from .config import FinetuneConfig
from .losses import SegmentationLoss
from .processes import Processes, all_reduce_sums
from .segmentation_run import build_segmentation_model, describe_segmentation_run, inference_long_side
from .segmentation_loaders import make_segmentation_loaders
from .segmentation_pictures import PICTURES, ValidationPicture, panel, write_samples


def full_precision(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits as float32 for the loss; float32 and float64 ones as they are."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def resized(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Logits resized bilinearly (align_corners=False) to `size` (H, W)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class SegmentationTrainMeter:
    """The pixel loss of each training batch, normalised over ranks, and its running sums."""

    def __init__(self, criterion: SegmentationLoss, procs: Processes):
        self.criterion = criterion
        self.procs = procs
        self.loss_sum = 0.0
        self.normaliser = 0.0
        self.image_count = 0

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """This rank's share of the job's loss (see the module docstring)."""
        total, normaliser = self.criterion(resized(full_precision(logits), targets.shape[-2:]), targets)
        job_normaliser = normaliser.detach().clone()
        if self.procs.distributed:
            dist.all_reduce(job_normaliser)
        self.loss_sum += float(total.detach())
        self.normaliser += float(normaliser.detach())
        self.image_count += targets.shape[0]
        scale = self.procs.world_size / job_normaliser.clamp(min=torch.finfo(job_normaliser.dtype).tiny)
        return total * scale

    def postfix(self) -> dict[str, str]:
        return {"loss": f"{self.loss_sum / max(self.normaliser, 1e-12):.3f}"}

    def images(self) -> int:
        return self.image_count

    def finish(self, procs: Processes) -> tuple[dict[str, Any], int]:
        loss_sum, normaliser, images = all_reduce_sums([self.loss_sum, self.normaliser, self.image_count], procs)
        return {"train_loss": loss_sum / max(normaliser, 1e-12)}, int(images)


class SegmentationValMeter:
    """Cross-entropy, confusion matrix and the first few pictures of the validation images."""

    def __init__(self, classes: list[str], ignore_index: int, keep_pictures: int):
        self.classes = classes
        self.confusion = ConfusionMatrix(len(classes), ignore_index)
        self.criterion = SegmentationLoss("ce", ignore_index=ignore_index)
        self.loss_sum = 0.0
        self.pixels = 0.0
        self.image_count = 0
        self.keep_pictures = keep_pictures
        self.pictures: list[ValidationPicture] = []

    def add(self, logits: torch.Tensor, targets: torch.Tensor, images: torch.Tensor) -> None:
        logits = resized(full_precision(logits), targets.shape[-2:])
        total, pixels = self.criterion(logits, targets)
        self.loss_sum += float(total)
        self.pixels += float(pixels)
        predicted = logits.argmax(dim=1)
        self.confusion.update(predicted, targets)
        self.image_count += targets.shape[0]
        for index in range(targets.shape[0]):
            if len(self.pictures) < self.keep_pictures:
                self.pictures.append(ValidationPicture(images[index].float().cpu(), predicted[index].cpu(),
                                                       targets[index].cpu()))

    def finish(self, procs: Processes) -> tuple[dict[str, Any], int]:
        matrix = self.confusion.matrix
        if procs.distributed:
            matrix = matrix.to(procs.device if procs.device.type == "cuda" else "cpu")
            dist.all_reduce(matrix)
            self.confusion.matrix = matrix.cpu()
        loss_sum, pixels, images = all_reduce_sums([self.loss_sum, self.pixels, self.image_count], procs)
        scores = self.confusion.scores()
        return {"val_loss": loss_sum / max(pixels, 1e-12), "val_miou": scores["miou"],
                "val_pixel_accuracy": scores["pixel_accuracy"], "val_per_class_iou": scores["per_class_iou"],
                "val_images": int(images)}, int(images)


class SegmentationTask:
    """Semantic segmentation on the mask data sets of `data.segmentation_data`."""

    name = "segmentation"

    def __init__(self, cfg: FinetuneConfig, procs: Processes):
        self.cfg = cfg
        self.procs = procs
        loaders = make_segmentation_loaders(cfg, procs)  # scans and checks every mask before anything is written
        self.train_loader, self.val_loader, self.classes = loaders.train, loaders.val, loaders.classes
        self.sampler = loaders.sampler
        self.val_set = loaders.val_set
        self.ignore_index = loaders.ignore_index
        if cfg.class_weights is not None and len(cfg.class_weights) != len(self.classes):
            raise bad_argument("class_weights", f"has {len(cfg.class_weights)} weights but {cfg.data_dir} has "
                                                f"{len(self.classes)} classes; give one weight per class")
        self.criterion = SegmentationLoss(cfg.loss, ignore_index=self.ignore_index, class_weights=cfg.class_weights,
                                          threshold=cfg.ohem_threshold, min_kept=cfg.ohem_min_kept)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order and augmentation."""
        self.sampler.set_epoch(epoch)
        self.train_loader.dataset.set_epoch(epoch)

    def describe(self) -> dict[str, Any]:
        """The config.json document of the run."""
        scales = self.cfg.scale_range if self.cfg.augment != "none" else [1.0, 1.0]
        long_side = inference_long_side(self.val_set, scales)
        return describe_segmentation_run(self.cfg, self.classes, self.ignore_index, long_side)

    def build_model(self, description: dict[str, Any], *, resuming: bool) -> nn.Module:
        """The network to train (see `segmentation_run.build_segmentation_model`)."""
        return build_segmentation_model(self.cfg, description, resuming=resuming)

    def train_meter(self) -> SegmentationTrainMeter:
        return SegmentationTrainMeter(self.criterion, self.procs)

    def val_meter(self) -> SegmentationValMeter:
        return SegmentationValMeter(self.classes, self.ignore_index, PICTURES if self.procs.is_writer else 0)

    def epoch_pictures(self, meter: SegmentationValMeter) -> list[ValidationPicture]:
        """The validation pictures rank 0 kept this epoch (image, predicted and true masks)."""
        return meter.pictures

    def log_pictures(self, pictures: list[ValidationPicture]) -> list[Image.Image]:
        """Photo | predicted | true panels for TensorBoard."""
        return [panel(picture, self.classes, self.ignore_index) for picture in pictures]

    def write_samples(self, run_dir: Path, pictures: list[ValidationPicture]) -> None:
        """RUN/samples/: the last epoch's predictions and truths blended on their photos."""
        write_samples(run_dir, pictures, self.classes, self.ignore_index)
