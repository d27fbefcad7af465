"""Class names (and Vistas colours): ImageNet's 1000 and Vistas' 65 shipped as CSV in the package, or a user's CSV.

A class CSV has a header with at least `index` and `name` columns (`r`, `g`, `b` for colours) and one row per
class, indices 0..N-1. `labels` arguments are "imagenet", "vistas" or the path of such a CSV.
"""

from __future__ import annotations

import csv
import functools
import importlib.resources
import os
from pathlib import Path

from ..errors import DataError

LABELS_DIR = importlib.resources.files(__package__) / "label_files"
BUILTIN_LABELS = {"imagenet": LABELS_DIR / "imagenet_classes.csv", "vistas": LABELS_DIR / "vistas_classes.csv"}
COLOUR_COLUMNS = ("r", "g", "b")


def read_class_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a class CSV ordered by `index`; gaps, duplicates or missing columns raise DataError."""
    path = Path(path) if isinstance(path, (str, os.PathLike)) else path  # or a package-data Traversable
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: cannot read class names ({error}).") from None
    if not rows or not {"index", "name"} <= set(rows[0]):
        raise DataError(f"{path}: a class CSV needs a header with 'index' and 'name' columns and one row per class.")
    try:
        by_index = {int(row["index"]): row for row in rows}
    except (TypeError, ValueError):
        raise DataError(f"{path}: every 'index' must be an integer.") from None
    if sorted(by_index) != list(range(len(rows))):
        raise DataError(f"{path}: indices must be 0..{len(rows) - 1}, each once.")
    return [by_index[index] for index in range(len(rows))]


@functools.lru_cache(maxsize=None)
def _builtin_table(labels: str) -> tuple[dict[str, str], ...]:
    return tuple(read_class_csv(BUILTIN_LABELS[labels]))


def _class_table(labels: str) -> tuple[dict[str, str], ...]:
    return _builtin_table(labels) if labels in BUILTIN_LABELS else tuple(read_class_csv(labels))


def class_names(labels: str | None, num_classes: int | None = None) -> list[str]:
    """Names of the classes of `labels`; `class N` names when the weights name no label set.

    With `num_classes`, a label set of another size raises DataError (it belongs to another network).
    """
    if labels is None:
        if num_classes is None:
            raise DataError("no label set given: pass labels ('imagenet', 'vistas' or a CSV path) or num_classes.")
        return [f"class {index}" for index in range(num_classes)]
    names = [row["name"] for row in _class_table(labels)]
    if num_classes is not None and len(names) != num_classes:
        raise DataError(f"labels {labels!r} name {len(names)} classes but the network has {num_classes} outputs; "
                        "give a class CSV with one row per output.")
    return names


def class_colors(labels: str) -> list[tuple[int, int, int]]:
    """The (r, g, b) colour of each class of `labels` (the Vistas palette, or a CSV's r, g, b columns)."""
    rows = _class_table(labels)
    if not set(COLOUR_COLUMNS) <= set(rows[0]):
        raise DataError(f"labels {labels!r} have no colours: a CSV with r, g, b columns is needed for a palette.")
    try:
        colours = [tuple(int(row[column]) for column in COLOUR_COLUMNS) for row in rows]
    except (TypeError, ValueError):
        raise DataError(f"labels {labels!r}: r, g, b must be integers 0..255.") from None
    if any(not 0 <= value <= 255 for colour in colours for value in colour):
        raise DataError(f"labels {labels!r}: r, g, b must be integers 0..255.")
    return colours  # type: ignore[return-value]


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names, in the order of the networks' outputs."""
    return class_names("imagenet")


def vistas_classes() -> list[str]:
    """The 65 Mapillary Vistas class names, in the order of the segmentation network's outputs."""
    return class_names("vistas")
