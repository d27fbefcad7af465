"""The files of a segmentation job: which images to read, where each output goes, writing the PNGs atomically,
and the class colours and names an output shows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from ..data.folders import is_image_file
from ..data.labels import class_colors, class_names
from ..errors import DataError
from ..system.files import atomic_path
from ..weights.catalog import get_weights


def collect_images(inputs: Sequence[Path]) -> list[Path]:
    """Image files named directly or found (non-recursively, sorted) in the named folders, each once; missing
    paths raise."""
    images: list[Path] = []
    for item in inputs:
        if item.is_dir():
            found = sorted(path for path in item.iterdir() if path.is_file() and is_image_file(path))
            if not found:
                raise DataError(f"folder {item} holds no images (.jpg, .png, ...); name image files or another folder")
            images.extend(found)
        elif item.is_file():
            images.append(item)
        else:
            raise DataError(f"input {item} does not exist; give image files or folders of images")
    unique = {path.resolve(): path for path in reversed(images)}
    return [path for path in images if unique[path.resolve()] is path]


def output_paths(images: Sequence[Path], out_dir: Path) -> list[Path]:
    """`out_dir/<image stem>.png` for each image; two images with the same stem would overwrite each other."""
    targets: dict[Path, Path] = {}
    for image in images:
        target = out_dir / f"{image.stem}.png"
        if target in targets:
            raise DataError(f"{targets[target]} and {image} would both be written to {target}; "
                            "segment them into different --out folders")
        targets[target] = image
    return [out_dir / f"{image.stem}.png" for image in images]


def make_output_folder(folder: Path) -> None:
    """Create --out (and its parents) if needed; a file in the way or no permission is a DataError."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create the output folder {folder} ({error.strerror}); choose another --out") from None


def write_png(image: Image.Image, target: Path) -> None:
    """Write a PNG atomically, so an interrupted run leaves no partial output."""
    with atomic_path(target) as temporary:
        image.save(temporary, format="PNG")


def class_table(weights_name: str, output: str) -> tuple[list[tuple[int, int, int]], list[str]]:
    """Colours and names of the weights' classes, read only for the outputs that show them."""
    labels = get_weights(weights_name).labels or "vistas"
    colors = class_colors(labels) if output in ("palette", "overlay") else []
    return colors, class_names(labels) if output == "overlay" else []
