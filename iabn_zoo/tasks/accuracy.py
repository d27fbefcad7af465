"""Accuracy bookkeeping shared by evaluation and fine-tuning: top-1 / top-5 hits and loss over many batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch

TOPK = 5


@dataclass
class Tally:
    """Running sums of loss, top-1 and top-5 hits over a number of images."""

    loss_sum: float = 0.0
    top1: int = 0
    top5: int = 0
    images: int = 0

    def add(self, loss_sum: float, top1: int, top5: int, images: int) -> None:
        self.loss_sum += loss_sum
        self.top1 += top1
        self.top5 += top5
        self.images += images

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.images, 1)

    @property
    def top1_percent(self) -> float:
        return 100.0 * self.top1 / max(self.images, 1)

    @property
    def top5_percent(self) -> float:
        return 100.0 * self.top5 / max(self.images, 1)


def count_correct(logits: torch.Tensor, targets: torch.Tensor, k: int = TOPK) -> tuple[int, int]:
    """How many rows have their target as the top prediction, and among the top `k` (k capped at the classes)."""
    topk = logits.topk(min(k, logits.shape[1]), dim=1).indices
    hits = topk.eq(targets.view(-1, 1))
    return int(hits[:, 0].sum().item()), int(hits.any(dim=1).sum().item())
