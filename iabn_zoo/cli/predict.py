"""`iabn-zoo predict NAME IMAGE...`: the top-k ImageNet classes of image files with a pretrained network."""

from __future__ import annotations

import argparse
import sys

from .exit_codes import exit_code
from .output import add_json_flag, emit

PREDICT_COLUMNS = ("image", "rank", "index", "name", "probability")


def register(subparsers) -> None:
    """Add the `predict` sub-command."""
    parser = subparsers.add_parser("predict", help="classify images with a pretrained network")
    parser.add_argument("name", metavar="NAME", help="weights name (or an architecture with published weights)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format and mode Pillow reads)")
    parser.add_argument("--topk", type=int, default=5, help="how many classes to show per image (default 5)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                        help="weights and activations: fp32 (default), bf16 (fast on CPUs with AMX), fp16 (CUDA)")
    parser.add_argument("--no-progress", action="store_true", help="no download progress bar")
    add_json_flag(parser)
    parser.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    """Classify every image; unreadable ones are reported on stderr and make the exit code 8 at the end."""
    from ..data.labels import class_names
    from ..errors import DataError, InvalidArgumentError
    from ..factory import create_model, resolve_weights
    from ..tasks.predict import predict_images
    from ..weights.catalog import default_weights_for

    from ..tasks.precision import check_precision

    if args.topk < 1:
        raise InvalidArgumentError(f"--topk must be >= 1, got {args.topk}")
    check_precision(args.precision, getattr(args, "device", None) or "cpu")  # before any download
    weights = resolve_weights(args.name) or default_weights_for(args.name)
    if weights.task != "classification":
        raise InvalidArgumentError(f"{weights.name} is a {weights.task} model; use `iabn-zoo segment` for it")
    names = class_names(weights.labels, weights.num_classes)
    model = create_model(weights.name, pretrained=True, progress=not args.no_progress)
    results = predict_images(model, args.images, names=names, preprocessing=weights.preprocessing,
                             topk=args.topk, batch_size=args.batch_size, precision=args.precision)
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
