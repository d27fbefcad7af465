"""Which task a fine-tuning run trains (classification or segmentation), the defaults that follow from it, and the
checks of the options only segmentation takes.

The task follows from the model: segmentation weights (task "segmentation" in the registry) or an architecture
whose network is a `SegmentationNet` (`deeplabv3_<backbone>`, the Vistas architecture) train a segmentation run,
every other model a classification run; `task=` may say it explicitly and must then agree.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import bad_argument
from ..models import get_arch, is_arch
from ..models.segmentation import SegmentationNet
from ..weights.catalog import get_weights, is_weights

TASKS = ("classification", "segmentation")
LOSSES = ("ce", "ohem")
OUTPUT_STRIDES = (8, 16)
SEGMENTATION_AUGMENT = ("standard", "jitter", "none")
# per task: (image_size, augment, schedule) when the run leaves them out
TASK_DEFAULTS = {"classification": (224, "imagenet", "cosine"), "segmentation": (512, "standard", "poly")}
# segmentation-only options and the value that means "not given"
SEGMENTATION_ONLY = {"output_stride": None, "backbone_weights": None, "loss": "ce", "class_weights": None,
                     "ignore_index": 255, "num_classes": None, "scale_range": (0.5, 2.0)}
MAX_CLASSES = 256  # masks are 8-bit PNGs


def model_task(model: str) -> str | None:
    """The task `model` (a weights or architecture name) is trained for; None for an unknown name."""
    if is_weights(model):
        return "segmentation" if get_weights(model).task == "segmentation" else "classification"
    if not is_arch(model):
        return None
    with torch.device("meta"):  # built without memory or initialisation, only to see what it is
        network = get_arch(model)()
    return "segmentation" if isinstance(network, SegmentationNet) else "classification"


def resolve_task(cfg: Any) -> None:
    """Fill `cfg.task` from the model (or check the explicit one agrees), then the task's defaults."""
    inferred = model_task(cfg.model)
    if cfg.task is None:
        cfg.task = inferred or "classification"
    elif cfg.task not in TASKS:
        raise bad_argument("task", f"must be one of {', '.join(TASKS)}, got {cfg.task!r}")
    elif inferred is not None and cfg.task != inferred:
        raise bad_argument("task", f"is {cfg.task} but {cfg.model} is a {inferred} network; drop {{task}} or "
                                   f"choose a {cfg.task} model")
    size, augment, schedule = TASK_DEFAULTS[cfg.task]
    cfg.image_size = size if cfg.image_size is None else cfg.image_size
    cfg.augment = augment if cfg.augment is None else cfg.augment
    cfg.schedule = schedule if cfg.schedule is None else cfg.schedule


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_task_options(cfg: Any, min_image_size: int) -> None:
    """Segmentation options in range; for a classification run, none of them given."""
    if cfg.task == "classification":
        given = [name for name, unset in SEGMENTATION_ONLY.items() if _normal(getattr(cfg, name)) != _normal(unset)]
        if given:
            raise bad_argument(given[0], f"is a segmentation option but {cfg.model} is a classification network; "
                                         "drop it, or fine-tune a segmentation model (e.g. deeplabv3_resnet18)")
        _check(_is_int(cfg.image_size) and cfg.image_size >= min_image_size, "image_size",
               f"must be an integer >= {min_image_size}, got {cfg.image_size!r}")
        return
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


def _normal(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _check(condition: bool, parameter: str, problem: str) -> None:
    if not condition:
        raise bad_argument(parameter, problem)
