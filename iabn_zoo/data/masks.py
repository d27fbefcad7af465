"""Segmentation masks: single-channel PNGs of class indices ('L', 'I', 'I;16' or palette 'P', whose pixel values
are the palette indices, not the colours), read, checked and turned into class-index images.

Checks name the file: a colour ('RGB', 'RGBA', ...) mask is refused (masks hold indices, not colours), so are a
mask whose size differs from its image's and values that are not a class index nor the ignore index. Values are
found with Pillow's histogram of the 8-bit index image (one pass in C), so checking every mask of a data set stays
fast; only masks wider than 8 bits go through torch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from ..errors import DataError
from .folders import DECODE_ERRORS
from .segmentation_labels import LabelTable

EIGHT_BIT_MODES = frozenset({"L", "P", "1"})
WIDE_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
EXIF_ORIENTATION = 0x0112
TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height
EIGHT_BIT_MAX = 255
# What reading a file may raise: Pillow's decode errors, and its bomb warning where warning filters make it one.
READ_ERRORS = (*DECODE_ERRORS, Image.DecompressionBombWarning)


class UnreadableFileError(DataError):
    """An image or mask that cannot be decoded: skipped or refused as `on_error` says, unlike a wrong mask."""


def _refuse_mode(path: Path, mode: str) -> None:
    if mode not in EIGHT_BIT_MODES | WIDE_MODES:
        raise DataError(f"mask {path} is a {mode!r} image: masks must hold class indices, not colours; save each "
                        "mask as a single-channel ('L') or palette ('P') PNG whose pixel values are class indices.")


def _decode_error(path: Path, what: str, error: BaseException) -> UnreadableFileError:
    return UnreadableFileError(f"{what} {path} cannot be read ({type(error).__name__}: {error}); remove or replace it.")


def _refuse_bomb(image: Image.Image) -> None:
    """Refuse more pixels than Pillow's limit (without changing warning filters, which threads share)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and image.width * image.height > limit:
        raise Image.DecompressionBombError(f"{image.width}x{image.height} pixels exceed Pillow's limit of {limit}")


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image as the network sees it (EXIF orientation applied), from its header only."""
    try:
        with Image.open(path) as image:
            _refuse_bomb(image)
            width, height = image.size
            if image.format == "PNG":
                image.verify()  # the chunks' checksums, without decoding
                orientation = None
            else:
                orientation = image.getexif().get(EXIF_ORIENTATION)
    except READ_ERRORS as error:
        raise _decode_error(path, "image", error) from None
    return (height, width) if orientation in TRANSPOSING_ORIENTATIONS else (width, height)


def read_mask(path: Path) -> Image.Image:
    """The mask at `path` as an 'L' (8-bit) or 'I' (32-bit) image of its raw index values."""
    try:
        with Image.open(path) as image:
            _refuse_mode(path, image.mode)
            _refuse_bomb(image)
            image.load()
            if image.mode == "P":  # the indices themselves; convert("L") would give the palette's grey levels
                return Image.frombytes("L", image.size, image.tobytes())
            if image.mode == "1":
                return image.convert("L").point(lambda value: value // 255)
            return image.convert("I") if image.mode in WIDE_MODES else image.copy()
    except DataError:
        raise
    except READ_ERRORS as error:
        raise _decode_error(path, "mask", error) from None


def mask_tensor(mask: Image.Image) -> torch.Tensor:
    """The (H, W) int64 tensor of an 'L' or 'I' image's values."""
    dtype = torch.uint8 if mask.mode == "L" else torch.int32
    data = torch.frombuffer(bytearray(mask.tobytes()), dtype=dtype)
    return data.view(mask.height, mask.width).long()


def present_values(mask: Image.Image) -> list[int]:
    """The distinct values of an 'L' or 'I' mask, ascending."""
    if mask.mode == "L":
        return [value for value, count in enumerate(mask.histogram()) if count]
    low, high = mask.getextrema()
    if low == high:
        return [int(low)]
    return torch.unique(mask_tensor(mask)).tolist()


def check_values(path: Path, mask: Image.Image, table: LabelTable, ignore_index: int) -> None:
    """Refuse values that are neither a class index (or a raw label of `table`) nor the ignore index."""
    limit = len(table.classes) if table.mapping is None else table.raw_count
    if limit is None:
        return
    bad = [value for value in present_values(mask) if not 0 <= value < limit and value != ignore_index]
    if bad:
        what = "class indices" if table.mapping is None else "label ids of the data set's config"
        raise DataError(f"mask {path} holds value(s) {bad[:8]}, but {what} are 0..{limit - 1} and the ignore index "
                        f"is {ignore_index}; fix the mask, or the class count / {{ignore_index}}.",
                        parameters=("ignore_index",))


def needs_values_check(table: LabelTable) -> bool:
    """Whether a mask must be decoded to be checked (its values can be out of range)."""
    return table.mapping is None or table.raw_count is not None


def check_pair(image_path: Path, mask_path: Path, table: LabelTable, ignore_index: int) -> None:
    """Every check of one image and its mask: readable, single-channel, same size, values in range."""
    size = image_size(image_path)
    if needs_values_check(table):
        mask = read_mask(mask_path)
        check_values(mask_path, mask, table, ignore_index)
        mask_size = mask.size
    else:
        mask_size = _mask_header_size(mask_path)
    if mask_size != size:
        raise DataError(f"mask {mask_path} is {mask_size[0]}x{mask_size[1]} but its image {image_path} is "
                        f"{size[0]}x{size[1]} (width x height); each mask must have its image's size.")


def _mask_header_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            _refuse_mode(path, image.mode)
            _refuse_bomb(image)
            image.verify()
            return image.size
    except DataError:
        raise
    except READ_ERRORS as error:
        raise _decode_error(path, "mask", error) from None


def to_class_mask(mask: Image.Image, table: LabelTable, ignore_index: int) -> Image.Image:
    """An image of class indices (ignore_index where a raw value has no class) from a raw 'L' / 'I' mask: 'L'
    when every index fits in 8 bits (Pillow maps it through a lookup table), else 'I'."""
    if mask.mode == "L" and 0 <= ignore_index <= EIGHT_BIT_MAX and len(table.classes) <= EIGHT_BIT_MAX:
        return mask if table.mapping is None else mask.point(table.lookup(ignore_index))
    values = mask_tensor(mask)
    if table.mapping is not None:
        size = max(256, int(values.max()) + 1) if values.numel() else 256
        values = torch.tensor(table.lookup(ignore_index, size), dtype=torch.int64)[values.clamp_(min=0)]
    return Image.frombytes("I", mask.size, values.to(torch.int32).numpy().tobytes())
