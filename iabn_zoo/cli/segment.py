"""`iabn-zoo segment`: semantic segmentation of images or folders with the Vistas model, one PNG per image."""

from __future__ import annotations

import argparse
import sys
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
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                        help="weights and activations: fp32 (default), bf16 (fast on CPUs with AMX), fp16 (CUDA)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_json_flag(parser)
    parser.set_defaults(func=run_segment)


def check_options(args: argparse.Namespace) -> tuple[tuple[float, ...], str]:
    """Validate the options before anything is loaded; returns the parsed scales and the device."""
    from ..system.devices import resolve_device
    from ..tasks.precision import check_precision
    from ..tasks.segment import parse_scales

    if args.long_side is not None and args.long_side <= 0:
        raise InvalidArgumentError(f"--long-side must be a positive number of pixels, got {args.long_side}")
    device = str(resolve_device(args.device))
    check_precision(args.precision, device)
    return parse_scales(args.scales), device


def build_predictor(args: argparse.Namespace, scales: tuple[float, ...], device: str):
    """The predictor for --weights with the command's options, on `device`."""
    from ..tasks.segment import SegmentationPredictor

    options = {"scales": scales, "flip": args.flip, "fusion": args.fusion, "precision": args.precision}
    if args.long_side is not None:
        options["long_side"] = args.long_side
    predictor = SegmentationPredictor.from_weights(args.weights, progress=not args.no_progress, **options)
    predictor.model.to(device)
    return predictor


def run_segment(args: argparse.Namespace) -> int:
    """Segment every input image and write its PNG; returns 8 if some images were unreadable, else 0."""
    from tqdm import tqdm

    from ..data.images import open_rgb
    from ..tasks.render import render
    from ..tasks.segment_files import class_table, collect_images, make_output_folder, output_paths, write_png

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
            write_png(picture, targets[i])
            rows[i]["status"] = "written"
    emit(rows, as_json=args.json, columns=("input", "output", "status"))
    return exit_code(DataError) if failed else 0
