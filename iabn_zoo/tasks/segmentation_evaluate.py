"""mIoU, per-class IoU and pixel accuracy of a segmentation network over a data set with masks: a segmentation RUN
directory (its weights, classes and preprocessing) or registered segmentation weights.

Each image is segmented exactly as `iabn-zoo segment` segments it (`SegmentationPredictor.predict` on the image:
resized to the model's long side, its recommended test-time scales and flip unless `scales` / `flip` say otherwise,
probabilities fused by their mean, the class map resized back to the image), and the class map is compared with the
mask in the same `ConfusionMatrix` training's validation uses: a run recommends scale 1 without flip and its long
side, so evaluating it on validation images of that size gives the scores of its last epoch.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from PIL import Image

from ..data.masks import mask_tensor
from ..data.segmentation_data import open_segmentation_split
from ..errors import DataError, InvalidArgumentError
from ..system.distributed import joined_group, process_device, shard, summed
from ..system.progress import progress_bar
from .confusion import ConfusionMatrix
from .precision import check_precision
from .segment import SegmentationPredictor, check_scales
from .segmentation_runs import is_segmentation_model, segmentation_classes


def evaluate_segmentation(model: str | os.PathLike[str], data_dir: str | os.PathLike[str], *,
                          scales: tuple[float, ...] | None = None, flip: bool | None = None,
                          device: str | None = None, precision: str = "fp32", progress: bool = True,
                          on_error: str = "skip") -> dict[str, Any]:
    """Scores (percent) of `model` over `data_dir` (a data set's root, whose val split is used, or one split);
    `scales` and `flip` default to the model's recommended ones. Under torchrun each rank segments its share of the
    images and every rank returns the scores of them all."""
    given = {} if scales is None else {"scales": check_scales(scales)}
    given.update({} if flip is None else {"flip": bool(flip)})
    target = process_device(device)
    check_precision(precision, target)
    if not is_segmentation_model(model):
        raise InvalidArgumentError(f"{model} is not a segmentation run or segmentation weights; `iabn-zoo evaluate` "
                                   "scores it with top-1/top-5 when --scales and --flip are left out",
                                   parameters=("scales", "flip"))
    classes, ignore_index = segmentation_classes(model)
    dataset = open_segmentation_split(data_dir, num_classes=len(classes), ignore_index=ignore_index,
                                      transform=image_and_mask, on_error=on_error)
    if len(dataset.classes) != len(classes):
        raise DataError(f"{dataset.root} has {len(dataset.classes)} classes, {model} predicts {len(classes)}; "
                        "evaluate on data with the network's classes")
    predictor = SegmentationPredictor.from_weights(str(model), progress=progress, device=target, precision=precision,
                                                   **given)
    confusion = ConfusionMatrix(len(classes), ignore_index)
    with joined_group(target.type):
        for index in progress_bar(shard(len(dataset)), enabled=progress, desc="evaluate", unit="image",
                                  leave=False):
            image, mask = dataset[index]
            confusion.update(predictor.predict(image).classes, mask)
        confusion.matrix = summed(confusion.matrix, target)
    scores = confusion.scores()
    return {"model": str(model), "data": str(dataset.root), "miou": scores["miou"],
            "pixel_accuracy": scores["pixel_accuracy"], "per_class_iou": dict(zip(classes, scores["per_class_iou"])),
            "images": len(dataset), "skipped": len(dataset.skipped), "scales": list(predictor.scales),
            "flip": predictor.flip, "long_side": predictor.long_side, "precision": precision}


def image_and_mask(image: Image.Image, mask: Image.Image) -> tuple[Image.Image, torch.Tensor]:
    """A data set item for `predict`: the RGB image as it is, the mask as class indices."""
    return image, mask_tensor(mask)

