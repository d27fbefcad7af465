"""The data of a classification run: the ImageFolder splits, then the training and validation loaders, per rank."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.folders import ImageFolder, load_splits
from ..data.transforms import eval_scale_for, eval_transform, train_transform
from ..errors import DataError
from ..system.loader_workers import WorkerLoader, worker_options
from .config import FinetuneConfig
from .processes import Processes


@dataclass(frozen=True)
class Loaders:
    """The training and validation loaders of this rank."""

    train: torch.utils.data.DataLoader
    val: torch.utils.data.DataLoader


def open_splits(cfg: FinetuneConfig) -> tuple[ImageFolder, ImageFolder]:
    """The training and validation splits of DATA (scanned and checked; DataError naming the file)."""
    return load_splits(
        cfg.data_dir, train_transform=train_transform(cfg.image_size, cfg.augment),
        val_transform=eval_transform(cfg.image_size, eval_scale_for(cfg.augment, cfg.image_size)),
        on_error=cfg.on_error, seed=cfg.seed)


def training_sampler(train_set: ImageFolder, cfg: FinetuneConfig,
                     procs: Processes) -> torch.utils.data.DistributedSampler:
    """This rank's shuffled share of the training set; DataError when a rank would get fewer than two images."""
    sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=procs.world_size, rank=procs.rank,
                                                  shuffle=True, seed=cfg.seed)
    if len(sampler) < 2:
        raise DataError(f"{len(train_set)} training images cannot feed {procs.world_size} processes with two images "
                        "each; add images or use fewer processes")
    return sampler


def make_loaders(cfg: FinetuneConfig, procs: Processes, train_set: ImageFolder, val_set: ImageFolder) -> Loaders:
    """Training loader (shuffled, split over ranks, seeded augmentation), validation loader (rank's shard)."""
    sampler = training_sampler(train_set, cfg, procs)
    workers = worker_options(cfg.num_workers)
    train_loader = WorkerLoader(
        train_set, batch_size=min(cfg.batch_size, len(sampler)), sampler=sampler, num_workers=cfg.num_workers,
        drop_last=True, pin_memory=procs.device.type == "cuda", persistent_workers=False, **workers)
    shard = torch.utils.data.Subset(val_set, list(range(procs.rank, len(val_set), procs.world_size)))
    val_loader = WorkerLoader(shard, batch_size=cfg.batch_size, shuffle=False,
                                             num_workers=cfg.num_workers, **workers)
    return Loaders(train=train_loader, val=val_loader)
