"""The options `iabn-zoo finetune` takes for segmentation runs, and the parsers of their values (a size or H,W; a
range A,B; class weights as numbers or a file of numbers). Their meaning and checks are the library's
(`iabn_zoo.train.task_options`); a malformed value stops argparse with exit code 2 before anything runs."""

from __future__ import annotations

import argparse
from pathlib import Path

# FinetuneConfig fields these options set (passed on when given)
SEGMENTATION_OPTIONS = ("task", "output_stride", "backbone_weights", "loss", "ohem_threshold", "ohem_min_kept",
                        "class_weights", "ignore_index", "num_classes", "scale_range", "grad_checkpointing")


def numbers(text: str, what: str) -> list[float]:
    """Comma-separated numbers (whitespace and newlines allowed between them)."""
    items = [item for item in text.replace("\n", ",").replace(" ", "").split(",") if item]
    try:
        return [float(item) for item in items]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be comma-separated numbers, got {text!r}") from None


def size_or_auto(text: str) -> int | str:
    """A batch size (an integer), or auto."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer or auto, got {text!r}") from None


def image_size(text: str) -> int | list[int] | str:
    """A side (224), height,width (512,1024), or auto."""
    if text == "auto":
        return text
    try:
        sides = [int(item) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a side or H,W in pixels, such as 512 or 512,1024; got {text!r}")\
            from None
    if len(sides) not in (1, 2):
        raise argparse.ArgumentTypeError(f"must be a side or H,W in pixels, got {text!r}")
    return sides[0] if len(sides) == 1 else sides


def scale_range(text: str) -> list[float]:
    """Two numbers low,high."""
    values = numbers(text, "the scale range")
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"must be two numbers low,high such as 0.5,2.0; got {text!r}")
    return values


def class_weights(text: str) -> list[float]:
    """Numbers given inline (1,2.5,1) or in a file (one per line, or comma-separated)."""
    path = Path(text)
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise argparse.ArgumentTypeError(f"cannot read the class weights file {path}: {error}") from None
    values = numbers(text, "class weights")
    if not values:
        raise argparse.ArgumentTypeError(f"no class weights in {text!r}")
    return values


def add_segmentation_options(parser: argparse.ArgumentParser) -> None:
    """The options of segmentation runs (a classification run refuses them)."""
    group = parser.add_argument_group("segmentation (MODEL a segmentation network: deeplabv3_<backbone>, the "
                                      "Vistas network or segmentation weights)")
    group.add_argument("--task", choices=("classification", "segmentation"),
                       help="what the run trains (default: what MODEL is)")
    group.add_argument("--backbone-weights", metavar="NAME|RUN|none",
                       help="deeplabv3_<backbone>: initialise the backbone from published ImageNet weights, a "
                            "classification RUN, or none (default: the backbone's default published weights)")
    group.add_argument("--output-stride", type=int, choices=(8, 16), help="network output stride (default 8)")
    group.add_argument("--loss", choices=("ce", "ohem"),
                       help="ce: cross-entropy; ohem: online hard example mining (default ce)")
    group.add_argument("--ohem-threshold", type=float,
                       help="ohem: keep pixels whose true-class probability is under this (default 0.7)")
    group.add_argument("--ohem-min-kept", type=int, help="ohem: keep at least this many pixels per batch "
                                                         "(default 100000)")
    group.add_argument("--class-weights", type=class_weights, metavar="W,W,...|FILE",
                       help="loss weight of each class, inline or in a file (default: all 1)")
    group.add_argument("--ignore-index", type=int, help="mask value that is not scored (default 255)")
    group.add_argument("--num-classes", type=int,
                       help="class count when DATA has no classes.csv (default: from the data)")
    group.add_argument("--scale-range", type=scale_range, metavar="LOW,HIGH",
                       help="random scaling of training images before the crop (default 0.5,2.0)")
    group.add_argument("--grad-checkpointing", action="store_true", default=None,
                       help="recompute blocks in backward: less memory, more time (default: off)")
