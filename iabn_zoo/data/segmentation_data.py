"""Segmentation data sets: the splits of a data set in one of the three layouts, every pair checked when it is
scanned (before any network is built or output written), and items (image, mask) of tensors.

A scan reads each image's header and decodes each mask whose values can be out of range (the folders layout and
Vistas; Cityscapes' ids all have a meaning), so a bad mask is reported with its path at once. Unreadable files are
skipped with a warning (`on_error="skip"`) or refused (`on_error="raise"`), as for ImageFolder; a wrong mask (colour,
size, values) is always refused. With `seed` set the augmentation of sample i in epoch e draws from a generator
seeded by (seed, e, i), so resumes, worker counts and ranks see the same samples (call `set_epoch` every epoch).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..errors import DataError, InvalidArgumentError
from ..system.progress import progress_bar
from .folders import ON_ERROR, seed_for
from .images import open_rgb
from .joint_transforms import PadCollate, SegmentationEvalTransform, SegmentationTrainTransform
from .masks import UnreadableFileError, check_pair, read_mask, to_class_mask
from .segmentation_layouts import (LAYOUT_HINT, SPLITS, SplitSource, detect_layout, is_segmentation_data,
                                   list_pairs, open_source, source_of_split_folder)

__all__ = ["SegmentationData", "SegmentationDataset", "detect_layout", "is_segmentation_data",
           "open_segmentation_data", "open_segmentation_split", "SegmentationTrainTransform",
           "SegmentationEvalTransform", "PadCollate"]

JointTransform = Callable[[Image.Image, Image.Image], tuple[torch.Tensor, torch.Tensor]]
PROGRESS_FROM = 200  # pairs; smaller data sets are checked without a bar
SCAN_THREADS = min(8, os.cpu_count() or 1)


def check_ignore_index(ignore_index: int, num_classes: int) -> int:
    """Refuse an ignore index that is a class index."""
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool) or 0 <= ignore_index < num_classes:
        raise InvalidArgumentError(f"{{ignore_index}} must be an integer outside 0..{num_classes - 1} (the class "
                                   f"indices), got {ignore_index!r}", parameters=("ignore_index",))
    return ignore_index


class SegmentationDataset(torch.utils.data.Dataset):
    """The (image, mask) pairs of one split; item i is `transform(image, class_mask)`, by default the normalised
    full-resolution tensors (float32 (3, H, W), int64 (H, W) with `ignore_index` where unlabelled)."""

    def __init__(self, source: SplitSource, transform: JointTransform | None = None, *, ignore_index: int = 255,
                 on_error: str = "skip", seed: int | None = None):
        if on_error not in ON_ERROR:
            raise InvalidArgumentError(f"{{on_error}} must be one of {', '.join(ON_ERROR)}, got {on_error!r}",
                                       parameters=("on_error",))
        self.source = source
        self.root = source.folder
        self.layout = source.layout
        self.classes = list(source.table.classes)
        self.ignore_index = check_ignore_index(ignore_index, len(self.classes))
        self.transform = transform if transform is not None else SegmentationEvalTransform()
        self.on_error = on_error
        self.seed = seed
        self.epoch = 0
        self.pairs, self.skipped = self._scan(list_pairs(source))

    def _problem(self, pair: tuple[Path, Path]) -> UnreadableFileError | None:
        """None when the pair passes every check, the error when a file cannot be read; other errors raise."""
        try:
            check_pair(*pair, self.source.table, self.ignore_index)
        except UnreadableFileError as error:
            return error
        return None

    def _scan(self, pairs: list[tuple[Path, Path]]) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
        """The pairs that pass every check, and (image, reason) of those skipped as unreadable."""
        # Pillow decodes and counts without the GIL, so threads check several masks at once.
        pool = ThreadPoolExecutor(max_workers=SCAN_THREADS)
        try:
            problems = list(progress_bar(pool.map(self._problem, pairs), total=len(pairs), unit="pair",
                                         enabled=len(pairs) >= PROGRESS_FROM, desc=f"checking {self.root}"))
        finally:
            pool.shutdown(cancel_futures=True)  # after a wrong mask, check no further
        kept = [pair for pair, problem in zip(pairs, problems) if problem is None]
        skipped = [(pair[0], str(problem)) for pair, problem in zip(pairs, problems) if problem is not None]
        if skipped and self.on_error == "raise":
            listing = "\n".join(f"  {reason}" for _, reason in skipped)
            raise DataError(f"{len(skipped)} unreadable file(s) under {self.root}; remove or replace them, or "
                            f"skip them with {{on_error}} skip:\n{listing}", parameters=("on_error",))
        for _, reason in skipped:
            warnings.warn(f"skipping a pair: {reason}", stacklevel=3)
        if not kept:
            raise DataError(f"no readable image and mask pair under {self.root}; {LAYOUT_HINT}.")
        return kept, skipped

    def __len__(self) -> int:
        return len(self.pairs)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation draws `__getitem__` makes (with `seed` set)."""
        self.epoch = epoch

    def load(self, index: int) -> tuple[Image.Image, Image.Image]:
        """The RGB image and the class-index mask ('L', or 'I' past 8 bits) of pair `index`."""
        image_path, mask_path = self.pairs[index]
        try:
            image = open_rgb(image_path)
        except DataError as error:
            raise UnreadableFileError(str(error)) from None
        mask = to_class_mask(read_mask(mask_path), self.source.table, self.ignore_index)
        if image.size != mask.size:
            raise DataError(f"mask {mask_path} is {mask.width}x{mask.height} but its image {image_path} is "
                            f"{image.width}x{image.height} once opened (EXIF orientation applied); each mask must "
                            "have its image's size.")
        return image, mask

    def _load_readable(self, index: int) -> tuple[Image.Image, Image.Image]:
        """Pair `index`, or in skip mode the next decodable one (with a warning naming the bad file)."""
        for offset in range(len(self.pairs)):
            try:
                return self.load((index + offset) % len(self.pairs))
            except UnreadableFileError as error:
                if self.on_error == "raise":
                    raise
                warnings.warn(f"{error} Another pair takes its place.", stacklevel=3)
        raise DataError(f"no image and mask pair under {self.root} could be decoded")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self._load_readable(index)
        if self.seed is None:
            return self.transform(image, mask)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed_for(self.seed, self.epoch, index))
            return self.transform(image, mask)


@dataclass
class SegmentationData:
    """The opened splits of a data set (None for a split not asked for) and what they share."""

    train: SegmentationDataset | None
    val: SegmentationDataset | None
    classes: list[str]
    layout: str
    ignore_index: int


def _layout_of(root: Path) -> str:
    layout = detect_layout(root)
    if layout is None:
        what = "does not exist or is not a folder" if not root.is_dir() else "is not a segmentation data set"
        raise DataError(f"{root} {what}: {LAYOUT_HINT}.")
    return layout


def open_segmentation_data(data_dir: str | Path, *, num_classes: int | None = None, ignore_index: int = 255,
                           train_transform: JointTransform | None = None, val_transform: JointTransform | None = None,
                           splits: Sequence[str] = SPLITS, on_error: str = "skip",
                           seed: int | None = 0) -> SegmentationData:
    """The `splits` of the data set at `data_dir`, each checked in full; `seed` drives the train augmentation."""
    root = Path(data_dir)
    unknown = [split for split in splits if split not in SPLITS]
    if unknown or not splits:
        raise InvalidArgumentError(f"splits must be one or more of {', '.join(SPLITS)}, got {list(splits)}")
    layout = _layout_of(root)
    sources = {split: open_source(root, layout, split, num_classes) for split in splits}
    transforms = {"train": train_transform, "val": val_transform}
    sets = {split: SegmentationDataset(source, transforms[split], ignore_index=ignore_index, on_error=on_error,
                                       seed=seed if split == "train" else None) for split, source in sources.items()}
    classes = next(iter(sets.values())).classes
    return SegmentationData(sets.get("train"), sets.get("val"), classes, layout, ignore_index)


def open_segmentation_split(path: str | Path, *, split: str = "val", num_classes: int | None = None,
                            ignore_index: int = 255, transform: JointTransform | None = None,
                            on_error: str = "skip") -> SegmentationDataset:
    """One split for evaluation: `path` is a data set root (its `split` is used) or one split folder."""
    folder = Path(path)
    source = source_of_split_folder(folder, num_classes) if detect_layout(folder) is None else None
    if source is None:
        source = open_source(folder, _layout_of(folder), split, num_classes)
    return SegmentationDataset(source, transform, ignore_index=ignore_index, on_error=on_error)
