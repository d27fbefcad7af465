"""The files of a segmentation job: which images to read, where each output goes, what the existing outputs are,
writing the PNGs atomically with the kind of output they hold, the memory the images need, and the class colours
and names an output shows.

Each PNG records its kind (palette, raw, prob8, prob16, overlay) and the weights in its text chunks, so that a
rerun keeps an existing output only when it is the kind asked for, and never passes off another kind as it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..data.folders import DECODE_ERRORS, is_image_file
from ..data.labels import class_colors, class_names
from ..errors import DataError, InvalidArgumentError
from ..system.files import atomic_path
from ..system.resources import check_fits
from ..system.storage import storage_guard
from ..weights.catalog import get_weights
from .footprint import NetworkFootprint
from .palette import class_palette
from .segment import FUSIONS, working_size

KIND_KEY = "iabn-zoo-output"
WEIGHTS_KEY = "iabn-zoo-weights"


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
    """Create --out (and its parents) if needed, once the work is about to write (`check_output_folder` has
    refused, before any work, a folder that cannot be); a failure is a StorageError."""
    with storage_guard(folder, context="nothing was written"):
        folder.mkdir(parents=True, exist_ok=True)


def output_kind(output: str, prob_bits: int = 8) -> str:
    """The kind an output file records: the output mode, with its bit depth for prob."""
    return f"prob{prob_bits}" if output == "prob" else output


def recorded_kind(path: Path) -> str | None:
    """The kind of output a PNG written by `write_png` holds; None for any other file."""
    try:
        with Image.open(path) as image:
            return getattr(image, "text", {}).get(KIND_KEY)
    except DECODE_ERRORS:
        return None


def outputs_to_write(targets: Sequence[Path], kind: str, *, overwrite: bool) -> list[int]:
    """Indices of the targets to (re)write: all with `overwrite`, else those missing. An existing file of another
    kind (or not written by this command) is refused before any work, never kept as if it were the one asked for."""
    if overwrite:
        return list(range(len(targets)))
    existing = {index: recorded_kind(target) for index, target in enumerate(targets) if target.exists()}
    others = [(targets[index], found) for index, found in existing.items() if found != kind]
    if others:
        listing = ", ".join(f"{path} ({found or 'not a segment output'})" for path, found in others[:5])
        more = f" and {len(others) - 5} more" if len(others) > 5 else ""
        raise InvalidArgumentError(
            f"{len(others)} existing file(s) are not {kind} outputs: {listing}{more}; pass {{overwrite}} to replace "
            "them, or choose another {out}", parameters=("overwrite", "out"))
    return [index for index in range(len(targets)) if index not in existing]


def write_png(image: Image.Image, target: Path, *, kind: str, weights: str) -> None:
    """Write a PNG atomically (an interrupted run leaves no partial output), recording its kind and weights."""
    info = PngInfo()
    info.add_text(KIND_KEY, kind)
    info.add_text(WEIGHTS_KEY, weights)
    with storage_guard(target, context="the outputs written before it are kept, a rerun keeps them and writes the "
                                       "rest"), atomic_path(target) as temporary:
        image.save(temporary, format="PNG", pnginfo=info)


def check_segmentation_fits(weights_name: str, images: Sequence[Path], *, long_side: int | None,
                            scales: Sequence[float], fusion: str, device: torch.device) -> None:
    """Refuse, before any work, images whose working size cannot fit `device`: the network's activations at the
    largest scale, the fusion buffers and the image itself (a lower bound, from image headers only)."""
    if not images:
        return
    weights = get_weights(weights_name)
    footprint = NetworkFootprint(weights.name)
    needs: dict[tuple[int, int], int] = {}
    for image in images:
        try:
            with Image.open(image) as opened:
                width, height = working_size(opened.size, long_side)
        except DECODE_ERRORS:
            continue  # reported when its turn comes
        if (width, height) not in needs:
            network = max(footprint.per_image(round(scale * height), round(scale * width)).inference
                          for scale in scales)
            fused = FUSIONS[fusion].buffer_bytes(1, weights.num_classes, (height, width))
            needs[width, height] = network + fused + 15 * width * height  # + the image as bytes and as floats
    if needs:
        (width, height), needed = max(needs.items(), key=lambda item: item[1])
        check_fits(needed, device, lower=("long_side", "scales"),
                   what=f"segmenting a {width}x{height} px working image at scales {','.join(map(str, scales))}")


def class_table(weights_name: str, output: str) -> tuple[list[tuple[int, int, int]], list[str]]:
    """Colours and names of the weights' classes, read only for the outputs that show them: the label file's own
    colours, else (a class list without r, g, b, such as a fine-tuning run's) the palette its run drew with."""
    labels = get_weights(weights_name).labels or "vistas"
    if output not in ("palette", "overlay"):
        return [], []
    try:
        colors = class_colors(labels)
    except DataError:
        colors = class_palette(class_names(labels))
    return colors, class_names(labels) if output == "overlay" else []
