"""Semantic segmentation scores from one confusion matrix: mean IoU, per-class IoU and pixel accuracy.

Training's validation, `iabn-zoo evaluate` of a segmentation network and the tests all count through
`ConfusionMatrix`, so a score means the same wherever it is printed. Rows are true classes, columns predicted
ones; pixels whose true label is the ignore index are never counted. The IoU of class c is
TP / (TP + FP + FN); mIoU is the mean over the classes whose union TP + FP + FN is above zero (the usual convention,
as Cityscapes' and mmsegmentation's scripts: a class neither present nor predicted says nothing), and a class with
an empty union has IoU None. Pixel accuracy is the share of counted pixels predicted right. All in percent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InvalidArgumentError


@dataclass
class ConfusionMatrix:
    """Pixel counts (num_classes x num_classes, int64): `matrix[true, predicted]`."""

    num_classes: int
    ignore_index: int = 255
    matrix: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.matrix is None:
            self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        """Count the pixels of a predicted class map against its true one (same shape, any batch layout)."""
        if predicted.shape != target.shape:
            raise InvalidArgumentError(f"prediction of shape {tuple(predicted.shape)} and mask of shape "
                                       f"{tuple(target.shape)} differ; resize the logits to the mask first")
        target = target.flatten().long()
        keep = target != self.ignore_index
        target, predicted = target[keep], predicted.flatten().long()[keep]
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= self.num_classes):
            raise InvalidArgumentError(f"mask values must lie in 0..{self.num_classes - 1} or be the ignore index "
                                       f"{self.ignore_index}, got {int(target.min())}..{int(target.max())}")
        counts = torch.bincount(target * self.num_classes + predicted, minlength=self.num_classes ** 2)
        self.matrix += counts.view(self.num_classes, self.num_classes).cpu()

    @property
    def pixels(self) -> int:
        """Pixels counted (the ignored ones excluded)."""
        return int(self.matrix.sum())

    def iou(self) -> list[float | None]:
        """Per class IoU in percent, None for a class neither present nor predicted."""
        matrix = self.matrix.double()
        hits = matrix.diagonal()
        union = matrix.sum(0) + matrix.sum(1) - hits
        return [100.0 * float(h / u) if u > 0 else None for h, u in zip(hits, union)]

    def miou(self) -> float:
        """Mean IoU (percent) over the classes with a non-empty union; 0 when nothing was counted."""
        scores = [value for value in self.iou() if value is not None]
        return sum(scores) / len(scores) if scores else 0.0

    def pixel_accuracy(self) -> float:
        """Share of counted pixels predicted right, in percent (0 when nothing was counted)."""
        total = self.pixels
        return 100.0 * int(self.matrix.diagonal().sum()) / total if total else 0.0

    def scores(self) -> dict[str, float | list[float | None] | int]:
        """mIoU, pixel accuracy, per-class IoU (class order) and the pixels counted."""
        return {"miou": self.miou(), "pixel_accuracy": self.pixel_accuracy(), "per_class_iou": self.iou(),
                "pixels": self.pixels}
