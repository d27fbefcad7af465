"""The data of a fine-tuning run: training and validation loaders over the ImageFolder splits, per rank."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.folders import load_splits
from ..data.transforms import eval_scale_for, eval_transform, train_transform
from ..errors import DataError
from .config import FinetuneConfig
from .processes import Processes


@dataclass(frozen=True)
class Loaders:
    """The training and validation loaders of this rank, and the class names they share."""

    train: torch.utils.data.DataLoader
    val: torch.utils.data.DataLoader
    classes: list[str]


def make_loaders(cfg: FinetuneConfig, procs: Processes) -> Loaders:
    """Training loader (shuffled, split over ranks, seeded augmentation), validation loader (rank's shard)."""
    train_set, val_set = load_splits(
        cfg.data_dir, train_transform=train_transform(cfg.image_size, cfg.augment),
        val_transform=eval_transform(cfg.image_size, eval_scale_for(cfg.augment, cfg.image_size)),
        on_error=cfg.on_error, seed=cfg.seed)
    sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=procs.world_size, rank=procs.rank,
                                                  shuffle=True, seed=cfg.seed)
    per_rank = len(sampler)
    if per_rank < 2:
        raise DataError(f"{len(train_set)} training images cannot feed {procs.world_size} processes with two images "
                        "each; add images or use fewer processes")
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=min(cfg.batch_size, per_rank), sampler=sampler, num_workers=cfg.num_workers,
        drop_last=True, pin_memory=procs.device.type == "cuda", persistent_workers=False)
    shard = torch.utils.data.Subset(val_set, list(range(procs.rank, len(val_set), procs.world_size)))
    val_loader = torch.utils.data.DataLoader(shard, batch_size=cfg.batch_size, shuffle=False,
                                             num_workers=cfg.num_workers)
    return Loaders(train=train_loader, val=val_loader, classes=train_set.classes)
