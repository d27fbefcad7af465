"""`iabn-zoo export MODEL --out PATH`: ONNX or a torch.export program of a network, checked after writing."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import InvalidArgumentError
from .options import add_batch_size, add_command, add_precision, add_pretrained, progress_allowed
from .output import emit

DESCRIPTION = (
    "Export MODEL (an architecture, a weights name or a fine-tuning RUN directory) to ONNX or a torch.export "
    "program of standard operators (norm layers folded into the convolutions). The graph takes the normalised "
    "float32 image batch (N, 3, H, W) and returns float32 logits (the Vistas network: at 1/8 of the input). The "
    "batch is dynamic unless --static-batch; height and width are fixed at --image-size unless --dynamic-size, "
    "which every zoo network allows from a minimum up: the classifiers from twice their output stride (64 px), "
    "the Vistas network from 680 px (its 84-pixel pooling window + 1, at stride 8). After writing, the file runs "
    "once in its own runtime (onnxruntime or torch.export.load) on a random batch of another size and is compared "
    "with the eager network; above 1e-4 relative (1e-2 in fp16/bf16) the command fails with exit code 9 and leaves "
    "PATH as it was.")


def register(subparsers: Any) -> None:
    """Add the `export` sub-command."""
    parser = add_command(subparsers, "export", help="export a network to ONNX or a torch.export program (.pt2)",
                         description=DESCRIPTION)
    parser.add_argument("model", metavar="MODEL", help="architecture, weights name or RUN directory")
    parser.add_argument("--out", required=True, metavar="PATH", help="file to write (.onnx or .pt2)")
    parser.add_argument("--format", choices=("onnx", "exported-program"),
                        help="default: from the suffix of PATH (.onnx, .pt2)", default=None)
    parser.add_argument("--image-size", default=None, metavar="S|H,W",
                        help="input side, or height,width (default: the size the network was trained or published "
                             "at: a run's --image-size, the weights' crop; 224 for an architecture); the example "
                             "size with --dynamic-size")
    add_batch_size(parser, default=1, help="batch of the exported example (the batch stays dynamic unless "
                                           "--static-batch)")
    parser.add_argument("--static-batch", action="store_true", help="fix the batch at --batch-size")
    parser.add_argument("--dynamic-size", action="store_true",
                        help="dynamic height and width (from 64 px for the classifiers, 680 px for Vistas)")
    add_precision(parser, help="weights and activations inside the graph (bf16: .pt2 only)")
    add_pretrained(parser)
    parser.set_defaults(func=run_export)


def parse_size(text: str) -> int | tuple[int, int]:
    """`S` or `H,W` as integers."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise InvalidArgumentError(f"--image-size takes S or H,W in pixels, got {text!r}") from None
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise InvalidArgumentError(f"--image-size takes S or H,W in pixels, got {text!r}")


def run_export(args: argparse.Namespace) -> int:
    """Export, then print the path, the file size and the difference the check measured."""
    from ..deploy import export_with_report

    size = parse_size(args.image_size) if args.image_size else None  # None: the network's own size
    report = export_with_report(args.model, args.out, format=args.format, image_size=size,
                                batch_size=args.batch_size, dynamic_batch=not args.static_batch,
                                dynamic_size=args.dynamic_size, precision=args.precision,
                                pretrained=args.pretrained, progress=progress_allowed(args))
    summary = {"path": str(report.path), "format": report.format, "precision": report.precision,
               "file_size": report.file_size, "max_difference": report.max_difference,
               "tolerance": report.tolerance, "check_shape": list(report.check_shape),
               "input_size": "x".join(map(str, report.metadata["input_size"][1:])),
               "seconds": round(report.seconds, 2),
               "metadata": str(report.metadata_path) if report.metadata_path else None}
    if args.json:
        emit(summary, as_json=True)
    else:
        emit({**summary, "file_size": f"{report.file_size / 2**20:.1f} MiB ({report.file_size} bytes)",
              "max_difference": f"{report.max_difference:.2e} (relative)", "tolerance": f"{report.tolerance:g}",
              "check_shape": "x".join(map(str, report.check_shape)),
              "metadata": summary["metadata"] or f"inside {report.path.name}"}, as_json=False)
    return 0
