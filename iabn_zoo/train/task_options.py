"""The checks of the options only segmentation takes (the segmentation task's `check_options`), and its crop sizes.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import bad_argument

LOSSES = ("ce", "ohem")
OUTPUT_STRIDES = (8, 16)
SEGMENTATION_AUGMENT = ("standard", "jitter", "none")
# the options only segmentation takes, and the value that means "not given"
SEGMENTATION_ONLY = {"output_stride": None, "backbone_weights": None, "loss": "ce", "class_weights": None,
                     "ignore_index": 255, "num_classes": None, "scale_range": (0.5, 2.0)}
MAX_CLASSES = 256  # masks are 8-bit PNGs
AUTO = "auto"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_segmentation_options(cfg: Any, min_image_size: int) -> None:
    """Segmentation options in range (the crop may be `auto`)."""
    if cfg.image_size != AUTO:
        cfg.image_size = crop_size(cfg.image_size, min_image_size)
    cfg.scale_range = _scale_range(cfg.scale_range)
    _check(cfg.augment in SEGMENTATION_AUGMENT, "augment",
           f"must be one of {', '.join(SEGMENTATION_AUGMENT)} for segmentation, got {cfg.augment!r}")
    _check(cfg.loss in LOSSES, "loss", f"must be one of {', '.join(LOSSES)}, got {cfg.loss!r}")
    _check(cfg.output_stride is None or cfg.output_stride in OUTPUT_STRIDES, "output_stride",
           f"must be 8 or 16, got {cfg.output_stride!r}")
    _check(cfg.backbone_weights is None or (isinstance(cfg.backbone_weights, str) and cfg.backbone_weights),
           "backbone_weights", f"must be a weights name, a RUN directory or none, got {cfg.backbone_weights!r}")
    _check(_is_number(cfg.ohem_threshold) and 0 < cfg.ohem_threshold <= 1, "ohem_threshold",
           f"must be in (0, 1], got {cfg.ohem_threshold!r}")
    _check(_is_int(cfg.ohem_min_kept) and cfg.ohem_min_kept >= 1, "ohem_min_kept",
           f"must be an integer >= 1, got {cfg.ohem_min_kept!r}")
    _check(_is_int(cfg.ignore_index) and 0 <= cfg.ignore_index <= 255, "ignore_index",
           f"must be an integer in 0..255 (masks are 8-bit), got {cfg.ignore_index!r}")
    _check(cfg.num_classes is None or (_is_int(cfg.num_classes) and 1 <= cfg.num_classes <= MAX_CLASSES),
           "num_classes", f"must be an integer in 1..{MAX_CLASSES}, got {cfg.num_classes!r}")
    if cfg.class_weights is not None:
        weights = cfg.class_weights
        _check(isinstance(weights, (list, tuple)) and weights and all(_is_number(w) and w >= 0 for w in weights)
               and any(w > 0 for w in weights), "class_weights",
               f"must be a list of numbers >= 0 (one per class, not all 0), got {weights!r}")
        cfg.class_weights = [float(w) for w in weights]


def crop_size(value: Any, minimum: int) -> tuple[int, int] | int:
    """A segmentation crop: a side (int) or (height, width), each >= `minimum`; kept as given (int or list)."""
    sides = [value] if _is_int(value) else list(value) if isinstance(value, (list, tuple)) else None
    if sides is None or len(sides) not in (1, 2) or not all(_is_int(s) and s >= minimum for s in sides):
        raise bad_argument("image_size", f"must be a side or (height, width), each an integer >= {minimum}, "
                                         f"got {value!r}")
    return sides[0] if len(sides) == 1 else sides


def crop_hw(value: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a checked crop size."""
    return (value, value) if _is_int(value) else (int(value[0]), int(value[1]))


def _scale_range(value: Any) -> list[float]:
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) and v > 0 for v in value)
            and value[0] <= value[1]):
        raise bad_argument("scale_range", f"must be two numbers 0 < low <= high, such as 0.5,2.0; got {value!r}")
    return [float(value[0]), float(value[1])]


def _check(condition: bool, parameter: str, problem: str) -> None:
    if not condition:
        raise bad_argument(parameter, problem)
