"""`iabn-zoo predict MODEL IMAGE...`: the top-k classes of image files, MODEL being whatever `create_model` takes."""

from __future__ import annotations

import argparse
import sys

from .exit_codes import exit_code
from .options import (
    add_batch_size,
    add_command,
    add_device,
    add_image_size,
    add_precision,
    add_pretrained,
    progress_allowed,
)
from .output import emit

PREDICT_COLUMNS = ("image", "rank", "index", "name", "probability")


def register(subparsers) -> None:
    """Add the `predict` sub-command."""
    parser = add_command(
        subparsers, "predict", help="classify images with a network",
        description="Print the most probable classes of each image. MODEL is a weights name, an architecture (its "
                    "default published weights; one without any is refused unless --no-pretrained) or a "
                    "fine-tuning RUN directory (its weights and classes). Unreadable images are reported and skipped "
                    "(exit code 8).")
    parser.add_argument("model", metavar="MODEL", help="weights or architecture name, or a RUN directory")
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files (any format and mode Pillow reads) or folders of them (searched "
                             "recursively, in sorted order; files without an image extension skipped)")
    parser.add_argument("--topk", type=int, default=5, help="how many classes to show per image")
    add_batch_size(parser)
    add_image_size(parser, help="center crop side in pixels, the shorter side resized in proportion (default: the "
                                "model's own, 224 for the published weights)")
    add_device(parser)
    add_precision(parser)
    add_pretrained(parser)
    parser.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    """Classify every image; unreadable ones are reported on stderr and make the exit code 8 at the end."""
    from ..data.folders import image_inputs
    from ..errors import DataError, bad_argument
    from ..system.devices import resolve_device
    from ..system.resources import out_of_memory_guard
    from ..tasks.classifiers import load_classifier, model_preprocessing
    from ..tasks.footprint import check_inference_fits
    from ..tasks.precision import check_precision
    from ..tasks.predict import predict_images

    for name in ("topk", "batch_size", "image_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise bad_argument(name, f"must be >= 1, got {value}")
    device = resolve_device(args.device)
    check_precision(args.precision, device)  # before any download
    preprocessing = model_preprocessing(args.model)  # an unknown name fails here
    images, skipped = image_inputs(args.images)  # and the paths too, before any download
    for folder, count in skipped.items():
        print(f"iabn-zoo: {count} file(s) in {folder} skipped: not images by their extension", file=sys.stderr)
    if args.image_size is not None:
        ratio = preprocessing["resize"] / preprocessing["crop"]
        preprocessing = {**preprocessing, "crop": args.image_size, "resize": round(args.image_size * ratio)}
    check_inference_fits(args.model, preprocessing["crop"], args.batch_size, device, resize=preprocessing["resize"])
    classifier = load_classifier(args.model, progress=progress_allowed(args), pretrained=args.pretrained)
    what = f"classifying {args.batch_size} image(s) at a time at {preprocessing['crop']} px"
    with out_of_memory_guard(what, ("batch_size", "image_size")):
        results = predict_images(classifier.model.to(device), images, names=classifier.names,
                                 preprocessing=preprocessing, topk=args.topk, batch_size=args.batch_size,
                                 progress=progress_allowed(args), precision=args.precision)
    for result in results:
        if not result.ok:
            print(f"iabn-zoo: error: {result.error}", file=sys.stderr)
    if args.json:
        emit([{"image": r.image, "error": r.error,
               "predictions": [{"rank": rank, "index": c.index, "name": c.name, "probability": c.probability}
                               for rank, c in enumerate(r.classes, 1)]} for r in results], as_json=True)
    else:
        rows = [{"image": r.image, "rank": rank, "index": c.index, "name": c.name,
                 "probability": f"{100 * c.probability:.2f}%"}
                for r in results for rank, c in enumerate(r.classes, 1)]
        emit(rows, as_json=False, columns=PREDICT_COLUMNS)
    failed = sum(not r.ok for r in results)
    return exit_code(DataError) if failed else 0
