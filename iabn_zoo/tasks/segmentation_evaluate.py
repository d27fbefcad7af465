"""mIoU, per-class IoU and pixel accuracy of a segmentation network over a data set with masks: a segmentation RUN
directory (its weights, classes and preprocessing) or registered segmentation weights.

Each image is segmented at its own size (times each test-time scale, optionally flipped, probabilities fused by
their mean, as `SegmentationPredictor` does), the fused prediction is compared with the mask in the same
`ConfusionMatrix` training's validation uses: with the default single scale and no flip, evaluating a run on its
validation split gives the scores of its last epoch.
"""

from __future__ import annotations

import os
from typing import Any

from ..data.segmentation_data import SegmentationEvalTransform, open_segmentation_split
from ..errors import DataError, InvalidArgumentError
from ..system.distributed import joined_group, process_device, shard, summed
from ..system.progress import progress_bar
from .confusion import ConfusionMatrix
from .precision import check_precision
from .segment import SegmentationPredictor, check_scales
from .segmentation_runs import is_segmentation_model, segmentation_network


def evaluate_segmentation(model: str | os.PathLike[str], data_dir: str | os.PathLike[str], *,
                          scales: tuple[float, ...] = (1.0,), flip: bool = False, device: str | None = None,
                          precision: str = "fp32", progress: bool = True, on_error: str = "skip") -> dict[str, Any]:
    """Scores (percent) of `model` over `data_dir` (a data set's root, whose val split is used, or one split); under
    torchrun each rank segments its share of the images and every rank returns the scores of them all."""
    scales = check_scales(scales)
    target = process_device(device)
    check_precision(precision, target)
    if not is_segmentation_model(model):
        raise InvalidArgumentError(f"{model} is not a segmentation run or segmentation weights; `iabn-zoo evaluate` "
                                   "scores it with top-1/top-5 when --scales and --flip are left out",
                                   parameters=("scales", "flip"))
    network, classes, prep, ignore_index = segmentation_network(model, progress=progress)
    dataset = open_segmentation_split(data_dir, num_classes=len(classes), ignore_index=ignore_index,
                                    transform=SegmentationEvalTransform(mean=prep["mean"], std=prep["std"]),
                                    on_error=on_error)
    if len(dataset.classes) != len(classes):
        raise DataError(f"{dataset.root} has {len(dataset.classes)} classes, {model} predicts {len(classes)}; evaluate on "
                        "data with the network's classes")
    predictor = SegmentationPredictor(network.to(target), mean=prep["mean"], std=prep["std"], long_side=None,
                                      scales=scales, flip=flip, precision=precision)
    confusion = ConfusionMatrix(len(classes), ignore_index)
    with joined_group(target.type):
        for index in progress_bar(shard(len(dataset)), enabled=progress, desc="evaluate", unit="image",
                                  leave=False):
            image, mask = dataset[index]
            _, predicted = predictor.fuse(image.unsqueeze(0))
            confusion.update(predicted[0].cpu(), mask)
        confusion.matrix = summed(confusion.matrix, target)
    scores = confusion.scores()
    return {"model": str(model), "data": str(dataset.root), "miou": scores["miou"],
            "pixel_accuracy": scores["pixel_accuracy"], "per_class_iou": dict(zip(classes, scores["per_class_iou"])),
            "images": len(dataset), "skipped": len(dataset.skipped), "scales": list(scales), "flip": flip, "precision": precision}

