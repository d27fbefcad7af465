"""`iabn-zoo segment`: semantic segmentation of images or folders with the Vistas model, one PNG per image."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import DataError
from .exit_codes import exit_code
from .options import add_command, add_device, add_precision, progress_allowed
from .output import emit


def register(subparsers) -> None:
    """Add the `segment` sub-command."""
    parser = add_command(
        subparsers, "segment",
        help="segment street images with the Vistas model (multi-scale, flip) and write PNGs",
        description="Segment images (files or folders of images) and write one PNG per image into --out, named "
                    "after it. An existing output of the kind asked for is kept unless --overwrite; one of another "
                    "kind stops the command before any work. Unreadable images are reported and skipped (exit code "
                    "8 at the end).",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", type=Path, help="image files or folders of images")
    parser.add_argument("--out", required=True, type=Path, help="folder for the PNGs (created if missing)")
    parser.add_argument("--weights", default="wider_resnet38_deeplab3_vistas",
                        help="segmentation weights name, an architecture for its default weights, or a segmentation "
                             "fine-tuning RUN directory (its classes, colours and long side)")
    parser.add_argument("--scales", help="comma-separated test-time scales, each > 0 (default: the weights' or the "
                                          "run's recommended ones, as `iabn-zoo info` shows: 1 for the Vistas "
                                          "weights and for runs)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction,
                        help="also run each scale on the mirrored image (default: as recommended; the Vistas "
                             "weights flip, runs do not)")
    parser.add_argument("--fusion", default="mean", choices=("mean", "voting", "max"),
                        help="how passes are fused: mean of probabilities, voting, max probability")
    parser.add_argument("--output", default="palette", choices=("palette", "raw", "prob", "overlay"),
                        help="palette: coloured class map; raw: class index as gray; prob: confidence as gray; "
                             "overlay: colours on the photo with a legend")
    parser.add_argument("--long-side", type=int, default=None,
                        help="resize the longest side to this many pixels first (default: the registry's, 2048; "
                             "a run's: the size it was trained at)")
    parser.add_argument("--prob-bits", type=int, default=8, choices=(8, 16), help="bits of --output prob images")
    add_device(parser)
    add_precision(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.set_defaults(func=run_segment)


def run_segment(args: argparse.Namespace) -> int:
    """Segment every input image and write its PNG; returns 8 if some images were unreadable, else 0.

    Every option, the inputs, the existing outputs, the output folder (writable) and the memory the images need
    are checked before the weights are loaded; the output folder is created once they are."""
    from ..data.images import open_rgb
    from ..errors import bad_argument
    from ..system.devices import resolve_device
    from ..system.progress import progress_bar, write_line
    from ..system.resources import out_of_memory_guard
    from ..system.storage import check_output_folder
    from ..tasks.precision import check_precision
    from ..tasks.render import render
    from ..tasks.segment import SegmentationPredictor, parse_scales
    from ..tasks.segment_files import (
        check_segmentation_fits,
        class_table,
        collect_images,
        make_output_folder,
        output_kind,
        output_paths,
        outputs_to_write,
        write_png,
    )
    from ..tasks.inference_passes import recommended_passes
    from ..tasks.segmentation_runs import check_segmentation_run, run_class_table
    from ..weights.catalog import get_weights
    from ..weights.run_reader import is_run_dir

    if args.long_side is not None and args.long_side <= 0:
        raise bad_argument("long_side", f"must be a positive number of pixels, got {args.long_side}")
    given_scales = parse_scales(args.scales) if args.scales is not None else None
    device = resolve_device(args.device)
    check_precision(args.precision, device)
    run = is_run_dir(args.weights)  # a segmentation fine-tuning run: its classes, palette and long side
    if run:
        check_segmentation_run(args.weights)
    weights = None if run else get_weights(args.weights)
    source = args.weights if run else weights.name
    passes = recommended_passes(source)  # the weights' or the run's scales, flip and long side, unless given
    scales = given_scales if given_scales is not None else passes.scales
    flip = args.flip if args.flip is not None else passes.flip
    long_side = args.long_side if args.long_side is not None else passes.long_side
    images = collect_images(args.inputs)
    targets = output_paths(images, args.out)
    kind = output_kind(args.output, args.prob_bits)
    todo = outputs_to_write(targets, kind, overwrite=args.overwrite)
    check_output_folder(args.out, context="nothing was segmented")
    if not run:
        check_segmentation_fits(weights.name, [images[i] for i in todo], long_side=long_side, scales=scales,
                                fusion=args.fusion, device=device)
    rows = [{"input": str(image), "output": str(target), "status": f"kept (a {kind} output exists; --overwrite "
             "replaces it)"} for image, target in zip(images, targets)]
    failed = 0
    if todo:
        predictor = SegmentationPredictor.from_weights(source, progress=progress_allowed(args), device=device,
                                                       scales=scales, flip=flip, fusion=args.fusion,
                                                       long_side=long_side, precision=args.precision)
        make_output_folder(args.out)  # only now: a failed download or a bad checkpoint leaves no empty folder
        colors, names = run_class_table(source, args.output) if run else class_table(source, args.output)
        for i in progress_bar(todo, enabled=progress_allowed(args), desc="segment", unit="image"):
            try:
                photo = open_rgb(images[i])
            except DataError as error:
                failed += 1
                rows[i]["status"] = f"skipped: {error}"
                write_line(f"iabn-zoo: skipping {images[i]}: {error}")
                continue
            with out_of_memory_guard(f"segmenting {images[i]}", ("long_side", "scales")):
                result = predictor.predict(photo, progress=progress_allowed(args))
            picture = render(result, args.output, colors=colors, names=names, photo=photo, prob_bits=args.prob_bits)
            write_png(picture, targets[i], kind=kind, weights=source)
            rows[i]["status"] = "written"
    emit(rows, as_json=args.json, columns=("input", "output", "status"))
    return exit_code(DataError) if failed else 0
