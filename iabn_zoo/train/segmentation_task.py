"""The semantic segmentation task (the contract is `train.task.Task`): the mask data sets, the pixel loss, mIoU /
per-class IoU / pixel accuracy from one confusion matrix, pictures, and what a run reports and records.

Training: the network's logits (at 1/output_stride) are resized bilinearly to the crop before the loss. The loss of a
step is the sum of the pixel losses of this rank's batch divided by the normaliser (pixels kept, or their class
weights) summed over all ranks, times the number of ranks: DistributedDataParallel averages the ranks' gradients,
so the job takes exactly the step one process takes on the union of the ranks' batches, whatever their sizes.
Validation: each image at full resolution, logits resized bilinearly to its mask's size.

config.json adds `ignore_index` and `backbone_weights`, and the preprocessing: mean, std, the crop trained at, the
test-time scales and flip (1 and none: what validation does), and `long_side`, the long side images are resized to
for inference. The network saw images at their own size times a random scale in `scale_range`, so that long side is
the typical (median) long side of the validation images times the geometric mean of the scale range (1 for
0.5..2): `iabn-zoo segment --weights RUN` then feeds 64-px scenes at 64 px, not at the Vistas network's 2048.
"""

from __future__ import annotations

import inspect
import math
import statistics
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..errors import bad_argument
from ..models import get_arch
from ..tasks.confusion import ConfusionMatrix
from .config import FinetuneConfig
from .losses import SegmentationLoss
from .processes import Processes, all_reduce_sums
from .segmentation_loaders import make_segmentation_loaders, open_run_data
from .segmentation_pictures import PICTURES, ValidationPicture, panel, write_samples
from .task import random_targets, register_task
from .task_options import SEGMENTATION_ONLY, check_segmentation_options, crop_hw

SIZE_SAMPLE = 8  # validation images whose size sets the inference long side


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


def architecture_default(arch: str, name: str) -> Any:
    """The default of keyword `name` of architecture `arch`'s constructor (None when it takes no such keyword)."""
    parameter = inspect.signature(get_arch(arch)).parameters.get(name)
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def inference_long_side(dataset: torch.utils.data.Dataset, scale_range: list[float]) -> int | None:
    """The median long side of the first validation masks, times the geometric mean of the training scales."""
    sides = [max(dataset[index][1].shape[-2:]) for index in range(min(SIZE_SAMPLE, len(dataset)))]
    if not sides:
        return None
    return max(1, round(statistics.median(sides) * math.sqrt(scale_range[0] * scale_range[1])))


@register_task
class SegmentationTask:
    """Semantic segmentation on the mask data sets of `data.segmentation_data`."""

    name = "segmentation"
    defaults = {"image_size": 512, "augment": "standard", "schedule": "poly"}
    own_options = SEGMENTATION_ONLY
    auto_sizes = ("batch_size", "image_size")
    columns = ("epoch", "train_loss", "val_loss", "val_miou", "val_pixel_accuracy", "lr", "images_per_s")
    summary = ("val_miou", "val_pixel_accuracy")
    scalars = {"loss/train": "train_loss", "loss/val": "val_loss", "miou/val": "val_miou",
               "pixel_accuracy/val": "val_pixel_accuracy", "iou/val": "val_per_class_iou", "learning_rate": "lr",
               "images_per_second": "images_per_s"}
    score_curve = ("mIoU (%)", ("val_miou",))
    check_options = staticmethod(check_segmentation_options)

    @staticmethod
    def ledger_loss(output: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Training's pixel cross-entropy (`SegmentationLoss`) of the logits resized to the crop, random masks."""
        logits = resized(full_precision(output), inputs.shape[-2:])
        mask = random_targets(logits.shape[1], (logits.shape[0], *logits.shape[2:]), logits.device)
        total, normaliser = SegmentationLoss("ce")(logits, mask)
        return total / normaliser

    @staticmethod
    def batch_bytes(batch: int, crop: tuple[int, int]) -> int:
        """float32 images and int64 masks."""
        return batch * crop[0] * crop[1] * (3 * 4 + 8)

    def __init__(self, cfg: FinetuneConfig, procs: Processes):
        self.cfg = cfg
        self.procs = procs
        self.data = open_run_data(cfg, procs)  # scans and checks every mask before anything is written
        self.classes = list(self.data.classes)
        self.ignore_index = self.data.ignore_index
        if cfg.class_weights is not None and len(cfg.class_weights) != len(self.classes):
            raise bad_argument("class_weights", f"has {len(cfg.class_weights)} weights but {cfg.data_dir} has "
                                                f"{len(self.classes)} classes; give one weight per class")
        self.criterion = SegmentationLoss(cfg.loss, ignore_index=self.ignore_index, class_weights=cfg.class_weights,
                                          threshold=cfg.ohem_threshold, min_kept=cfg.ohem_min_kept)

    def batch_limit(self) -> int:
        """The most images one rank's batch can hold: its share of the training set."""
        return -(-len(self.data.train) // self.procs.world_size)

    def arch_options(self, arch: str, arch_kwargs: dict[str, Any]) -> dict[str, Any]:
        """The output stride: the option, else the weights', else the architecture's default (recorded)."""
        stride = self.cfg.output_stride if self.cfg.output_stride is not None else arch_kwargs.get(
            "output_stride", architecture_default(arch, "output_stride"))
        return {} if stride is None else {"output_stride": stride}

    def start(self) -> None:
        """The loaders, at the run's final batch size and crop."""
        self.train_loader, self.val_loader = make_segmentation_loaders(self.cfg, self.procs, self.data)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order and augmentation."""
        self.train_loader.batch_sampler.set_epoch(epoch)
        self.train_loader.dataset.set_epoch(epoch)

    def preprocessing(self) -> dict[str, Any]:
        """Mean, std, the crop, test-time scales and flip (validation's), the inference long side."""
        scales = self.cfg.scale_range if self.cfg.augment != "none" else [1.0, 1.0]
        return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "crop": list(crop_hw(self.cfg.image_size)),
                "long_side": inference_long_side(self.data.val, scales), "interpolation": "bilinear",
                "scales": [1.0], "flip": False}

    def run_facts(self) -> dict[str, Any]:
        """The ignore index and where the backbone's weights came from."""
        return {"ignore_index": self.ignore_index, "backbone_weights": self.cfg.backbone_weights}

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
