"""`iabn-zoo segment`: semantic segmentation of images or folders with the Vistas model, one PNG per image."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..errors import DataError, InvalidArgumentError
from .exit_codes import exit_code
from .output import add_json_flag, emit

DEFAULT_SCALES = "0.7,1,1.2"


def register(subparsers) -> None:
    """Add the `segment` sub-command."""
    parser = subparsers.add_parser(
        "segment",
        help="segment street images with the Vistas model (multi-scale, flip) and write PNGs",
        description="Segment images (files or folders of images) and write one PNG per image into --out, named "
                    "after it. Existing outputs are kept unless --overwrite; unreadable images are reported and "
                    "skipped (exit code 8 at the end).",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", type=Path, help="image files or folders of images")
    parser.add_argument("--out", required=True, type=Path, help="folder for the PNGs (created if missing)")
    parser.add_argument("--weights", default="wider_resnet38_deeplab3_vistas",
                        help="registered segmentation weights (default: %(default)s)")
    parser.add_argument("--scales", default=DEFAULT_SCALES,
                        help="comma-separated test-time scales, each > 0 (default: %(default)s)")
    parser.add_argument("--flip", action="store_true", help="also run each scale on the mirrored image")
    parser.add_argument("--fusion", default="mean", choices=("mean", "voting", "max"),
                        help="how passes are fused: mean of probabilities, voting, max probability")
    parser.add_argument("--output", default="palette", choices=("palette", "raw", "prob", "overlay"),
                        help="palette: coloured class map; raw: class index as gray; prob: confidence as gray; "
                             "overlay: colours on the photo with a legend (default: %(default)s)")
    parser.add_argument("--long-side", type=int, default=None,
                        help="resize the longest side to this many pixels first (default: the registry's, 2048)")
    parser.add_argument("--prob-bits", type=int, default=8, choices=(8, 16), help="bits of --output prob images")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda if available)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_json_flag(parser)
    parser.set_defaults(func=run_segment)


def collect_images(inputs: Sequence[Path]) -> list[Path]:
    """Image files named directly or found (non-recursively, sorted) in the named folders, each once; missing
    paths raise."""
    from ..data.folders import is_image_file

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


def save_atomically(image, target: Path) -> None:
    """Write a PNG through a temporary file in the same folder, so an interrupted run leaves no partial output."""
    handle, temporary = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".png.tmp", dir=target.parent)
    os.close(handle)
    try:
        image.save(temporary, format="PNG")
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def check_options(args: argparse.Namespace) -> tuple[tuple[float, ...], str]:
    """Validate the options before anything is loaded; returns the parsed scales and the device."""
    import torch

    from ..tasks.segment import parse_scales

    if args.long_side is not None and args.long_side <= 0:
        raise InvalidArgumentError(f"--long-side must be a positive number of pixels, got {args.long_side}")
    scales = parse_scales(args.scales)
    if args.device is None:
        return scales, "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise InvalidArgumentError(f"--device {args.device!r} is not a torch device; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError("--device cuda: no CUDA device is available here; use --device cpu")
    return scales, args.device


def build_predictor(args: argparse.Namespace, scales: tuple[float, ...], device: str):
    """The predictor for --weights with the command's options, on `device`."""
    from ..tasks.segment import SegmentationPredictor

    options = {"scales": scales, "flip": args.flip, "fusion": args.fusion}
    if args.long_side is not None:
        options["long_side"] = args.long_side
    predictor = SegmentationPredictor.from_weights(args.weights, progress=not args.no_progress, **options)
    predictor.model.to(device)
    return predictor


def class_table(weights_name: str, output: str) -> tuple[list[tuple[int, int, int]], list[str]]:
    """Colours and names of the weights' classes, read only for the outputs that show them."""
    from ..data.labels import class_colors, class_names
    from ..weights.catalog import get_weights

    labels = get_weights(weights_name).labels or "vistas"
    colors = class_colors(labels) if output in ("palette", "overlay") else []
    return colors, class_names(labels) if output == "overlay" else []


def make_output_folder(folder: Path) -> None:
    """Create --out (and its parents) if needed; a file in the way or no permission is a DataError."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create the output folder {folder} ({error.strerror}); choose another --out") from None


def run_segment(args: argparse.Namespace) -> int:
    """Segment every input image and write its PNG; returns 8 if some images were unreadable, else 0."""
    from tqdm import tqdm

    from ..data.images import open_rgb
    from ..tasks.render import render

    scales, device = check_options(args)
    images = collect_images(args.inputs)
    targets = output_paths(images, args.out)
    make_output_folder(args.out)
    rows = [{"input": str(image), "output": str(target), "status": "kept (exists; --overwrite replaces it)"}
            for image, target in zip(images, targets)]
    todo = [i for i, target in enumerate(targets) if args.overwrite or not target.exists()]
    failed = 0
    if todo:
        predictor = build_predictor(args, scales, device)
        colors, names = class_table(args.weights, args.output)
        for i in tqdm(todo, desc="segment", unit="image", disable=args.no_progress, file=sys.stderr):
            try:
                photo = open_rgb(images[i])
            except DataError as error:
                failed += 1
                rows[i]["status"] = f"skipped: {error}"
                tqdm.write(f"iabn-zoo: skipping {images[i]}: {error}", file=sys.stderr)
                continue
            result = predictor.predict(photo)
            picture = render(result, args.output, colors=colors, names=names, photo=photo, prob_bits=args.prob_bits)
            save_atomically(picture, targets[i])
            rows[i]["status"] = "written"
    emit(rows, as_json=args.json, columns=("input", "output", "status"))
    return exit_code(DataError) if failed else 0
