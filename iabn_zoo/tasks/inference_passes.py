"""A segmentation model's recommended test-time augmentation, said in one place: the `scales` and `flip` of its
preprocessing, in the registry entry of published weights (the Vistas weights: scale 1 and flipping, what the
authors' published results used) or in a fine-tuning run's config.json (scale 1, no flip: what its validation
did), with the long side images are resized to first. `segment`, `evaluate` and `SegmentationPredictor.from_weights`
take these by default (options override them), so the two commands give the same class maps; `info` prints them.
Entries and runs written before these fields existed mean scale 1, no flip.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..weights.catalog import get_weights
from ..weights.run_reader import is_run_dir, read_run

DEFAULT_SCALES = (1.0,)
DEFAULT_LONG_SIDE = 2048  # the Vistas preprocessing: entries without a long side of their own


@dataclass(frozen=True)
class InferencePasses:
    """Test-time scales, mirrored passes, and the long side images are resized to (None: kept)."""

    scales: tuple[float, ...]
    flip: bool
    long_side: int | None

    def options(self) -> dict[str, Any]:
        """As `SegmentationPredictor` keywords."""
        return {"scales": self.scales, "flip": self.flip, "long_side": self.long_side}

    def said(self) -> str:
        """`scales 1.0 + flip, long side 2048`."""
        scales = ",".join(f"{scale:g}" for scale in self.scales)
        side = f"long side {self.long_side}" if self.long_side is not None else "images at their own size"
        return f"scales {scales}{' + flip' if self.flip else ''}, {side}"


def from_preprocessing(preprocessing: dict[str, Any], default_long_side: int | None) -> InferencePasses:
    """The test time a preprocessing table recommends."""
    scales = tuple(float(scale) for scale in preprocessing.get("scales", DEFAULT_SCALES))
    return InferencePasses(scales, bool(preprocessing.get("flip", False)),
                    preprocessing.get("long_side", default_long_side))


def recommended_passes(model: str | os.PathLike[str]) -> InferencePasses:
    """The test time segmentation weights (a weights or architecture name) or a segmentation RUN recommend."""
    if is_run_dir(model):
        return from_preprocessing(read_run(model).preprocessing, None)
    return from_preprocessing(get_weights(str(model)).preprocessing, DEFAULT_LONG_SIDE)
