"""Folder data sets in the ImageFolder layout (`root/CLASS/image.png`), read with Pillow.

Unreadable files are found when the folder is scanned and reported with their paths: skipped with a warning
(`on_error="skip"`) or refused (`on_error="raise"`); a file that still fails to decode later is handled the same
way in `__getitem__`, so a bad file never crashes a loader worker in the middle of an epoch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import DataError, InvalidArgumentError
from .images import open_rgb

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
ON_ERROR = ("skip", "raise")
LAYOUT_HINT = "expected the ImageFolder layout ROOT/CLASS/image.png, one sub-folder per class"

# Errors Pillow raises on a broken or hostile file (UnidentifiedImageError is an OSError).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, DataError)


def is_image_file(path: Path) -> bool:
    """Whether `path` has an image extension (matched case-insensitively) and is not a hidden file."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


class SampleWarning(UserWarning):
    """An image of this process's own share of the data failed to load: under torchrun only the rank that met it
    knows, so every rank reports its own (other messages are the same on every rank: rank 0 alone prints them)."""


def image_inputs(inputs: Sequence[str | os.PathLike[str]]) -> tuple[list[Path], dict[Path, int]]:
    """The image files named by `inputs`: files as given, folders searched recursively in sorted order (hidden
    files and files without an image extension skipped, counted per folder). A missing path, or a folder holding
    no image, is a DataError naming it; checked before any network is loaded."""
    images: list[Path] = []
    skipped: dict[Path, int] = {}
    for item in map(Path, inputs):
        if item.is_file():
            images.append(item)
        elif item.is_dir():
            found = sorted(path for path in item.rglob("*") if path.is_file())
            kept = [path for path in found if is_image_file(path)]
            if not kept:
                raise DataError(f"folder {item} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); name "
                                "image files or another folder")
            images.extend(kept)
            if len(found) > len(kept):
                skipped[item] = len(found) - len(kept)
        else:
            raise DataError(f"{item} does not exist; give image files or folders of images")
    return images, skipped


def find_classes(root: str | Path) -> list[str]:
    """The sorted names of the class sub-folders of `root`."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist or is not a folder; {LAYOUT_HINT}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"no class folders in {root}; {LAYOUT_HINT}")
    return classes


def check_readable(path: Path) -> str | None:
    """None when Pillow can identify and verify the file, else the reason it cannot."""
    try:
        with Image.open(path) as image:
            image.verify()
    except DECODE_ERRORS as error:
        return f"{type(error).__name__}: {error}"
    return None


def seed_for(seed: int, epoch: int, index: int) -> int:
    """A generator seed that depends only on (seed, epoch, sample index), whatever process loads the sample."""
    return (seed * 0x9E3779B1 + epoch * 0x85EBCA77 + index * 0xC2B2AE3D) % (2**63)


class ImageFolder(torch.utils.data.Dataset):
    """Images under `root/CLASS/`, labelled by the index of CLASS in `classes` (default: sorted folder names), or
    by `class_to_idx[CLASS]` when that mapping is given (e.g. folder names -> a pretrained network's outputs).

    With `seed` set, the random transforms of sample i in epoch e draw from a generator seeded by (seed, e, i):
    augmentation then repeats exactly across resumes, worker counts and ranks (call `set_epoch` every epoch).
    """

    def __init__(self, root: str | Path, transform: Callable[[Image.Image], Any] | None = None, *,
                 classes: list[str] | None = None, class_to_idx: dict[str, int] | None = None,
                 on_error: str = "skip", verify: bool = True, seed: int | None = None):
        if on_error not in ON_ERROR:
            raise InvalidArgumentError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
        self.root = Path(root)
        self.transform = transform
        self.on_error = on_error
        self.seed = seed
        self.epoch = 0
        if class_to_idx is not None:
            self.classes = sorted(class_to_idx)
            self.class_to_idx = dict(class_to_idx)
        else:
            self.classes = find_classes(self.root) if classes is None else list(classes)
            self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.skipped: list[tuple[Path, str]] = []
        self.samples = self._scan(verify)
        self.targets = [target for _, target in self.samples]

    def _scan(self, verify: bool) -> list[tuple[Path, int]]:
        samples: list[tuple[Path, int]] = []
        for name in self.classes:
            folder = self.root / name
            if not folder.is_dir():
                raise DataError(f"class folder {folder} is missing; {LAYOUT_HINT}")
            files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
            samples += [(path, self.class_to_idx[name]) for path in files]
        if not samples:
            raise DataError(f"no images found under {self.root} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))});"
                            f" {LAYOUT_HINT}")
        if verify:
            samples = self._drop_unreadable(samples)
        self._check_every_class_has_images(samples)
        return samples

    def _drop_unreadable(self, samples: list[tuple[Path, int]]) -> list[tuple[Path, int]]:
        readable = []
        for path, target in samples:
            reason = check_readable(path)
            if reason is None:
                readable.append((path, target))
            else:
                self.skipped.append((path, reason))
        if self.skipped and self.on_error == "raise":
            listing = "\n".join(f"  {path}: {reason}" for path, reason in self.skipped)
            raise DataError(f"{len(self.skipped)} unreadable image(s) under {self.root}; remove or replace them, "
                            f"or skip them with {{on_error}} skip:\n{listing}", parameters=("on_error",))
        for path, reason in self.skipped:  # one line per file, so that each problem reads on its own
            warnings.warn(f"skipping unreadable image {path} ({reason})", stacklevel=3)
        return readable

    def _check_every_class_has_images(self, samples: list[tuple[Path, int]]) -> None:
        present = {target for _, target in samples}
        empty = [name for name, i in self.class_to_idx.items() if i not in present]
        if empty:
            raise DataError(f"class folder(s) without readable images under {self.root}: {', '.join(empty)}; "
                            "add images or remove the folder(s)")

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation draws `__getitem__` makes (with `seed` set)."""
        self.epoch = epoch

    def load(self, index: int) -> Image.Image:
        """The RGB image of sample `index`; a decode failure raises DataError naming the file."""
        path = self.samples[index][0]
        try:
            return open_rgb(path)
        except DataError:
            raise  # it names the file already
        except DECODE_ERRORS as error:
            raise DataError(f"cannot decode image {path}: {error}; remove or replace it") from error

    def _load_readable(self, index: int) -> tuple[Image.Image, int]:
        """Sample `index`, or in skip mode the next decodable one (with a warning naming the bad file)."""
        for offset in range(len(self.samples)):
            candidate = (index + offset) % len(self.samples)
            try:
                return self.load(candidate), self.samples[candidate][1]
            except DataError as error:
                if self.on_error == "raise":
                    raise
                warnings.warn(f"{error} Another image takes its place.", SampleWarning, stacklevel=3)
        raise DataError(f"no image under {self.root} could be decoded")

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, target = self._load_readable(index)
        if self.transform is None:
            return image, target
        if self.seed is None:
            return self.transform(image), target
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed_for(self.seed, self.epoch, index))
            return self.transform(image), target


def check_same_classes(train: list[str], val: list[str], train_root: Path, val_root: Path) -> None:
    """Refuse a validation split whose class folders differ from the training split's."""
    missing, extra = sorted(set(train) - set(val)), sorted(set(val) - set(train))
    if missing or extra:
        parts = ([f"missing in {val_root}: {', '.join(missing)}"] if missing else []) + \
                ([f"not in {train_root}: {', '.join(extra)}"] if extra else [])
        raise DataError(f"train and val must have the same class folders; {'; '.join(parts)}")


def load_splits(data_dir: str | Path, *, train_transform: Callable | None, val_transform: Callable | None,
                on_error: str = "skip", seed: int | None = None,
                min_classes: int = 2) -> tuple[ImageFolder, ImageFolder]:
    """The `train/` and `val/` splits of `data_dir`, checked to share one class list of at least `min_classes`."""
    data_dir = Path(data_dir)
    train_root, val_root = data_dir / "train", data_dir / "val"
    for split in (train_root, val_root):
        if not split.is_dir():
            raise DataError(f"{split} is missing: DATA must hold train/ and val/, each in the ImageFolder layout "
                            "(DATA/train/CLASS/image.png)")
    classes = find_classes(train_root)
    check_same_classes(classes, find_classes(val_root), train_root, val_root)
    if len(classes) < min_classes:
        raise DataError(f"{train_root} has {len(classes)} class folder(s) ({', '.join(classes)}); a classifier "
                        f"needs at least {min_classes}: add one sub-folder of images per class")
    train = ImageFolder(train_root, train_transform, classes=classes, on_error=on_error, seed=seed)
    val = ImageFolder(val_root, val_transform, classes=classes, on_error=on_error)
    return train, val
