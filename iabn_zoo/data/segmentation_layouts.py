"""The three segmentation data layouts, told apart by their folders, and the (image, mask) pairs of each split.

- "folders":    DATA/{train,val}/images/NAME.{jpg,jpeg,png,...} with DATA/{train,val}/masks/NAME.png (sub-folders
                mirrored), optional DATA/classes.csv.
- "cityscapes": DATA/leftImg8bit/{train,val}/CITY/X_leftImg8bit.png with
                DATA/gtFine/{train,val}/CITY/X_gtFine_labelIds.png.
- "vistas":     DATA/{training,validation}/images/KEY.jpg with .../labels/KEY.png (or .../v1.2/labels/KEY.png), and
                DATA/config.json (or config_v1.2.json).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .folders import is_image_file
from .segmentation_labels import LabelTable, cityscapes_table, find_vistas_config, folder_classes, vistas_table

LAYOUTS = ("folders", "cityscapes", "vistas")
SPLITS = ("train", "val")
VISTAS_SPLITS = {"train": "training", "val": "validation"}
CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit.png"
CITYSCAPES_MASK_SUFFIX = "_gtFine_labelIds.png"
LAYOUT_HINT = ("expected DATA/{train,val}/images + DATA/{train,val}/masks (+ DATA/classes.csv), Cityscapes "
               "(DATA/leftImg8bit, DATA/gtFine) or Mapillary Vistas (DATA/training, DATA/validation, DATA/config.json)")
MAX_LISTED = 10


@dataclass(frozen=True)
class SplitSource:
    """Where one split's pairs come from: the layout, the split folder and the data set's class table."""

    layout: str
    folder: Path
    table: LabelTable


def _is_folders_split(folder: Path) -> bool:
    return (folder / "images").is_dir() and (folder / "masks").is_dir()


def _vistas_labels(folder: Path) -> Path:
    versioned = folder / "v1.2" / "labels"
    return versioned if versioned.is_dir() and not (folder / "labels").is_dir() else folder / "labels"


def detect_layout(data_dir: str | Path) -> str | None:
    """"folders", "cityscapes" or "vistas" when `data_dir` is the root of such a data set, else None."""
    root = Path(data_dir)
    if any(_is_folders_split(root / split) for split in SPLITS):
        return "folders"
    if (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir():
        return "cityscapes"
    if find_vistas_config(root) and any((root / name / "images").is_dir() for name in VISTAS_SPLITS.values()):
        return "vistas"
    return None


def is_segmentation_data(data_dir: str | Path) -> bool:
    """Whether `data_dir` is the root of a segmentation data set in one of the three layouts."""
    return detect_layout(data_dir) is not None


def class_table(root: Path, layout: str, num_classes: int | None) -> LabelTable:
    """The classes of the data set at `root` and how its mask values map to them."""
    if layout == "folders":
        return folder_classes(root, num_classes)
    table = cityscapes_table() if layout == "cityscapes" else vistas_table(find_vistas_config(root))
    if num_classes is not None and num_classes != len(table.classes):
        raise DataError(f"{root} is a {layout} data set of {len(table.classes)} classes but {{num_classes}} is "
                        f"{num_classes}; leave it out.", parameters=("num_classes",))
    return table


def split_folder(root: Path, layout: str, split: str) -> Path:
    """The folder of `split` ("train" or "val") of a data set root."""
    if layout == "folders":
        return root / split
    if layout == "cityscapes":
        return root / "leftImg8bit" / split
    return root / VISTAS_SPLITS[split]


def open_source(root: Path, layout: str, split: str, num_classes: int | None) -> SplitSource:
    """The source of `split` of the data set at `root`, its folder checked to exist."""
    folder = split_folder(root, layout, split)
    if not folder.is_dir():
        raise DataError(f"{folder} is missing: this {layout} data set needs its {split} split there.")
    return SplitSource(layout, folder, class_table(root, layout, num_classes))


def source_of_split_folder(folder: Path, num_classes: int | None) -> SplitSource | None:
    """The source when `folder` is one split of a data set (its images/ and masks/, a Vistas split folder, or
    leftImg8bit/SPLIT of Cityscapes), else None."""
    if _is_folders_split(folder):
        root = folder if (folder / "classes.csv").is_file() else folder.parent
        return SplitSource("folders", folder, folder_classes(root, num_classes))
    if folder.parent.name == "leftImg8bit" and detect_layout(folder.parent.parent) == "cityscapes":
        return SplitSource("cityscapes", folder, class_table(folder.parent.parent, "cityscapes", num_classes))
    if (folder / "images").is_dir() and find_vistas_config(folder.parent):
        return SplitSource("vistas", folder, class_table(folder.parent, "vistas", num_classes))
    return None


def _mask_for(source: SplitSource, image: Path) -> Path:
    if source.layout == "folders":
        relative = image.relative_to(source.folder / "images")
        return (source.folder / "masks" / relative).with_suffix(".png")
    if source.layout == "cityscapes":
        city, name = image.parent.name, image.name[: -len(CITYSCAPES_IMAGE_SUFFIX)]
        return source.folder.parent.parent / "gtFine" / source.folder.name / city / (name + CITYSCAPES_MASK_SUFFIX)
    return _vistas_labels(source.folder) / (image.stem + ".png")


def _images(source: SplitSource) -> list[Path]:
    if source.layout == "cityscapes":
        return sorted(source.folder.glob("*/*" + CITYSCAPES_IMAGE_SUFFIX))
    folder = source.folder / "images"
    found = folder.rglob("*") if source.layout == "folders" else folder.iterdir()
    return sorted(path for path in found if path.is_file() and is_image_file(path))


def list_pairs(source: SplitSource) -> list[tuple[Path, Path]]:
    """(image, mask) paths of a split, sorted; missing masks, two images for one mask or none at all: DataError."""
    pairs = [(image, _mask_for(source, image)) for image in _images(source)]
    if not pairs:
        raise DataError(f"no images in {source.folder} ({source.layout} layout); {LAYOUT_HINT}.")
    missing = [image for image, mask in pairs if not mask.is_file()]
    if missing:
        listing = "\n".join(f"  {image} (expected {_mask_for(source, image)})" for image in missing[:MAX_LISTED])
        more = f"\n  ... and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
        raise DataError(f"{len(missing)} image(s) under {source.folder} have no mask; add the masks or remove the "
                        f"images:\n{listing}{more}")
    masks: dict[Path, Path] = {}
    for image, mask in pairs:
        if mask in masks:
            raise DataError(f"images {masks[mask]} and {image} share the mask {mask}; keep one of them.")
        masks[mask] = image
    return pairs
