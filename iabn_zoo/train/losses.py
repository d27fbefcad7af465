"""The losses of segmentation training: per-pixel cross-entropy with an ignore index and optional class weights, and
online hard example mining (OHEM).

Each loss returns the sum of its pixel losses and its normaliser (the pixels counted, or the sum of their class
weights), not their ratio: the loop divides by the normaliser summed over every rank of a torchrun job, so that two
processes with unequal batches take the very step one process takes on the union (see `segmentation_task`).

OHEM, as HRNet and mmsegmentation define it: among the pixels that are not ignored, keep those whose softmax
probability of the true class is under `threshold`; when fewer than `min_kept` are, the threshold rises to the
`min_kept`-th smallest probability, so that at least min(`min_kept`, pixels) are kept (ties at that probability
are all kept; HRNet's strict comparison would keep one pixel fewer when the batch holds at most `min_kept`). Mining
looks at this process's batch: under torchrun each rank keeps its own hard pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


class SegmentationLoss:
    """Cross-entropy (`kind` "ce") or OHEM ("ohem") over (N, C, H, W) logits and (N, H, W) masks of class indices."""

    def __init__(self, kind: str = "ce", *, ignore_index: int = 255, class_weights: Sequence[float] | None = None,
                 threshold: float = 0.7, min_kept: int = 100_000):
        self.kind = kind
        self.ignore_index = ignore_index
        self.class_weights = None if class_weights is None else torch.tensor(list(class_weights), dtype=torch.float64)
        self.threshold = threshold
        self.min_kept = min_kept

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of the kept pixels' losses, their normaliser), both 0-dim tensors of the logits' dtype."""
        weight = None if self.class_weights is None else self.class_weights.to(logits.device, logits.dtype)
        losses = F.cross_entropy(logits, target, weight=weight, ignore_index=self.ignore_index, reduction="none")
        kept = target != self.ignore_index
        if self.kind == "ohem":
            kept = kept & hard_pixels(logits.detach(), target, self.ignore_index, self.threshold, self.min_kept)
        pixel_weight = kept.to(logits.dtype)
        if weight is not None:
            pixel_weight = pixel_weight * weight[target.clamp(0, weight.numel() - 1)]
        return (losses * kept).sum(), pixel_weight.sum()


@torch.no_grad()
def hard_pixels(logits: torch.Tensor, target: torch.Tensor, ignore_index: int, threshold: float,
                min_kept: int) -> torch.Tensor:
    """Boolean (N, H, W): the pixels OHEM keeps (see the module's docstring); ignored pixels never."""
    valid = target != ignore_index
    probability = torch.softmax(logits, dim=1).gather(1, torch.where(valid, target, 0).unsqueeze(1)).squeeze(1)
    candidates = probability[valid]
    if candidates.numel() == 0:
        return valid
    kth = candidates.kthvalue(min(min_kept, candidates.numel())).values
    return valid & ((probability < threshold) | (probability <= kth))
