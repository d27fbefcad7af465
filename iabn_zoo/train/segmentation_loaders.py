"""The data of a segmentation run: its splits (scanned and checked by `data.segmentation_data` before any network is
built or file written), the augmentation of the training crops, and how the images are shared among processes.

Training batches: each epoch draws one order of the training set from (seed, epoch); the job's batches are
consecutive slices of `batch_size x world_size` images of that order, and rank r takes every world_size-th image of
each slice from its r-th on. So one process with batch B x W sees exactly the images a W-process job sees in each
step, the last slice may leave the ranks unequal batches (InPlace-ABN statistics and the loss are then combined over
ranks), and a last slice smaller than max(2, world_size) images is dropped (batch statistics need two images, and
every rank one). Validation: rank r scores images r, r + W, ... one at a time at full resolution (images differ in
size), and the confusion matrices are summed over ranks.
"""

from __future__ import annotations

from collections.abc import Iterator
import torch

from ..data.segmentation_data import (
    SegmentationData,
    SegmentationEvalTransform,
    SegmentationTrainTransform,
    open_segmentation_data,
)
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..errors import DataError
from ..system.loader_workers import WorkerLoader, worker_options
from .config import FinetuneConfig
from .processes import Processes
from .task_options import crop_hw


class RankBatchSampler(torch.utils.data.Sampler[list[int]]):
    """This rank's share of each step's batch, the whole job's batches cut from one seeded order per epoch."""

    def __init__(self, size: int, batch_size: int, rank: int, world_size: int, seed: int):
        self.size, self.batch_size, self.rank, self.world_size, self.seed = size, batch_size, rank, world_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the batches follow."""
        self.epoch = epoch

    def job_batches(self) -> list[list[int]]:
        """The whole job's batches of this epoch, before they are shared among ranks."""
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        step = self.batch_size * self.world_size
        batches = [order[start:start + step] for start in range(0, self.size, step)]
        return [batch for batch in batches if len(batch) >= max(2, self.world_size)]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.job_batches():
            yield batch[self.rank::self.world_size]

    def __len__(self) -> int:
        return len(self.job_batches())


def train_augmentation(cfg: FinetuneConfig) -> SegmentationTrainTransform:
    """Random scale, crop of image_size (padded with the ignore index), flip; `jitter` adds colour jitter; `none`
    only crops."""
    return SegmentationTrainTransform.preset("none" if cfg.augment == "none" else "standard", crop_hw(cfg.image_size),
                                             scale_range=tuple(cfg.scale_range), jitter=cfg.augment == "jitter",
                                             mean=IMAGENET_MEAN, std=IMAGENET_STD, ignore_index=cfg.ignore_index)


def open_run_data(cfg: FinetuneConfig, procs: Processes) -> SegmentationData:
    """Scan and check DATA (DataError naming the file); the training crops are set by `make_segmentation_loaders`,
    once the run's crop is final."""
    data = open_segmentation_data(cfg.data_dir, num_classes=cfg.num_classes, ignore_index=cfg.ignore_index,
                                  val_transform=SegmentationEvalTransform(mean=IMAGENET_MEAN, std=IMAGENET_STD),
                                  on_error=cfg.on_error, seed=cfg.seed)
    if data.train is None or data.val is None or len(data.val) == 0:
        raise DataError(f"{cfg.data_dir} needs a training and a validation split with images and masks")
    if len(RankBatchSampler(len(data.train), 2, procs.rank, procs.world_size, cfg.seed)) == 0:
        raise DataError(f"{len(data.train)} training images cannot feed {procs.world_size} process(es) with "
                        f"{max(2, procs.world_size)} images per step; add images or use fewer processes")
    return data


def make_segmentation_loaders(cfg: FinetuneConfig, procs: Processes, data: SegmentationData
                              ) -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    """This rank's training loader (crops of image_size) and validation loader (its share, one image at a time)."""
    data.train.transform = train_augmentation(cfg)
    sampler = RankBatchSampler(len(data.train), cfg.batch_size, procs.rank, procs.world_size, cfg.seed)
    workers = worker_options(cfg.num_workers)
    train = WorkerLoader(data.train, batch_sampler=sampler, num_workers=cfg.num_workers,
                                        pin_memory=procs.device.type == "cuda", **workers)
    shard = torch.utils.data.Subset(data.val, list(range(procs.rank, len(data.val), procs.world_size)))
    val = WorkerLoader(shard, batch_size=1, shuffle=False, num_workers=cfg.num_workers, **workers)
    return train, val
