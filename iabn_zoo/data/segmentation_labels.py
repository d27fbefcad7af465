"""Class lists of segmentation data sets and the tables that turn a data set's mask values into class indices.

- A folders data set's optional `classes.csv`: one `index,name` line per class, indices 0..N-1 each once (any
  order); a first line `index,name` is a header and skipped; blank lines are skipped; names may be quoted.
- Cityscapes: the 34 label ids of `*_gtFine_labelIds.png` mapped to the 19 training ids of the official
  cityscapesScripts table; every other value becomes the ignore index.
- Mapillary Vistas v1.2: `config.json`'s labels (66); those with `evaluate` true are the classes in file order (65,
  the order of the Vistas network's outputs), every other label and value becomes the ignore index.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

# label id -> training id of the 19 evaluated Cityscapes classes; ids not listed (void, parking, rail track, guard
# rail, bridge, tunnel, polegroup, caravan, trailer, ...) have no training id.
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                        26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                      "bicycle")
VISTAS_CONFIG_NAMES = ("config.json", "config_v1.2.json")
CLASSES_CSV = "classes.csv"


@dataclass(frozen=True)
class LabelTable:
    """How raw mask values become class indices: `mapping[value]` for the listed values, else `ignore_index`
    (`mapping` None: the values are the class indices). `raw_count`: values >= it are refused (None: any)."""

    classes: tuple[str, ...]
    mapping: dict[int, int] | None = None
    raw_count: int | None = None

    def lookup(self, ignore_index: int, size: int = 256) -> list[int]:
        """The class index of each raw value 0..size-1 (ignore_index for values without one)."""
        if self.mapping is None:
            return [value if value < len(self.classes) else ignore_index for value in range(size)]
        return [self.mapping.get(value, ignore_index) for value in range(size)]


def cityscapes_table() -> LabelTable:
    """Cityscapes' 19 training classes from the label ids of gtFine."""
    return LabelTable(CITYSCAPES_CLASSES, dict(CITYSCAPES_TRAIN_IDS))


def find_vistas_config(root: Path) -> Path | None:
    """The Vistas v1.2 config file of a data set root, if there is one."""
    return next((root / name for name in VISTAS_CONFIG_NAMES if (root / name).is_file()), None)


def vistas_table(config: Path) -> LabelTable:
    """The evaluated labels of a Vistas `config.json` as classes (their `readable` names), in file order."""
    try:
        labels = json.loads(config.read_text(encoding="utf-8"))["labels"]
        evaluated = [(raw, label.get("readable") or label["name"]) for raw, label in enumerate(labels)
                     if label["evaluate"]]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise DataError(f"{config}: not a Mapillary Vistas config ({type(error).__name__}: {error}); it needs a "
                        "'labels' list whose entries have 'name', 'readable' and 'evaluate'.") from None
    if not evaluated:
        raise DataError(f"{config}: no label has 'evaluate': true, so the data set has no classes.")
    mapping = {raw: index for index, (raw, _) in enumerate(evaluated)}
    return LabelTable(tuple(name for _, name in evaluated), mapping, raw_count=len(labels))


def read_classes_csv(path: Path) -> list[str]:
    """Class names of a `classes.csv` (`index,name` lines, optional header); a bad line raises DataError."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read the class list ({error}).") from None
    names: dict[int, str] = {}
    for number, row in enumerate(csv.reader(lines), start=1):
        if not row or not "".join(row).strip():
            continue
        if number == 1 and [cell.strip().lower() for cell in row[:2]] == ["index", "name"]:
            continue
        index = _class_index(path, number, row, names)
        names[index] = row[1].strip()
    if not names:
        raise DataError(f"{path}: no classes; write one 'index,name' line per class (0,background ...).")
    if sorted(names) != list(range(len(names))):
        missing = sorted(set(range(max(names) + 1)) - set(names))
        raise DataError(f"{path}: class indices must be 0..{len(names) - 1}, each once; missing {missing[:10]}.")
    return [names[index] for index in range(len(names))]


def _class_index(path: Path, number: int, row: list[str], seen: dict[int, str]) -> int:
    where = f"{path}, line {number}"
    if len(row) != 2 or not row[1].strip():
        raise DataError(f"{where}: expected 'index,name', got {','.join(row)!r}.")
    try:
        index = int(row[0])
    except ValueError:
        raise DataError(f"{where}: the index {row[0]!r} is not an integer.") from None
    if index < 0:
        raise DataError(f"{where}: the index {index} is negative.")
    if index in seen:
        raise DataError(f"{where}: index {index} appears twice.")
    return index


def folder_classes(root: Path, num_classes: int | None) -> LabelTable:
    """The classes of a folders data set: its classes.csv, else `num_classes` unnamed ones (`class 0` ...)."""
    csv_path = root / CLASSES_CSV
    if csv_path.is_file():
        names = read_classes_csv(csv_path)
        if num_classes is not None and num_classes != len(names):
            raise DataError(f"{csv_path} lists {len(names)} classes but {{num_classes}} is {num_classes}; "
                            "drop one of the two or make them agree.", parameters=("num_classes",))
        return LabelTable(tuple(names))
    if num_classes is None:
        raise DataError(f"{root} has no {CLASSES_CSV}: write one ('index,name' per line) or give {{num_classes}}.",
                        parameters=("num_classes",))
    return LabelTable(tuple(f"class {index}" for index in range(num_classes)))
