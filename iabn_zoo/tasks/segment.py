"""Segmentation inference with test-time augmentation: several scales, optional horizontal flip, fused per pixel.

The semantics follow the authors' Vistas test script: each scale resizes the normalised image bilinearly
(`round(scale * side)`), the network's logits are resized bilinearly back to the image's size, turned into
probabilities with a softmax and fused by mean of probabilities, voting, or max probability.

Memory: passes are fused one after the other into buffers at the output resolution, and each pass's logits are
resized in bands of rows, so no full-resolution logits tensor ever exists; `max` fusion keeps only two (H, W) maps.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from ..data.transforms import resample_filter, to_tensor
from ..errors import InvalidArgumentError, bad_argument
from ..system.progress import progress_bar
from .precision import check_precision, inference_model

FUSION_MODES = ("mean", "voting", "max")
DEFAULT_WEIGHTS = "wider_resnet38_deeplab3_vistas"
# Elements of one band of resized logits: bounds the temporary memory of a pass (1M floats = 4 MiB).
BAND_ELEMENTS = 1 << 20
# Images at least this large (working pixels) get a progress bar over their passes; smaller ones finish too fast.
PASS_BAR_PIXELS = 1 << 20


@dataclass(frozen=True)
class SegmentationResult:
    """The fused prediction of one image at its own size: class index and its fused probability per pixel."""

    classes: torch.Tensor  # (H, W) int64
    confidence: torch.Tensor  # (H, W) float32 in [0, 1]

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as PIL counts."""
        return self.classes.shape[1], self.classes.shape[0]


def check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """Validate test-time scales: a non-empty list of finite numbers > 0."""
    scales = tuple(float(s) for s in scales)
    if not scales:
        raise bad_argument("scales", "needs at least one scale, e.g. 1 or 0.7,1,1.2")
    bad = [s for s in scales if not math.isfinite(s) or s <= 0]
    if bad:
        raise bad_argument("scales", f"must be finite numbers > 0, got {bad}; e.g. 0.7,1,1.2")
    return scales


def parse_scales(text: str) -> tuple[float, ...]:
    """Scales from a comma-separated string such as '0.7,1,1.2' (brackets allowed, as in the authors' script); an
    empty item ('1,,2', a trailing comma) is refused rather than dropped."""
    items = [item.strip() for item in text.strip().strip("[]").split(",")]
    try:
        values = [float(item) for item in items]
    except ValueError:
        raise bad_argument("scales", f"must be comma-separated numbers like 0.7,1,1.2, got {text!r}") from None
    return check_scales(values)


def check_fusion(mode: str) -> str:
    """Validate a fusion mode name."""
    if mode not in FUSION_MODES:
        raise InvalidArgumentError(f"fusion must be one of {', '.join(FUSION_MODES)}, got {mode!r}")
    return mode


# --- resizing logits in bands -------------------------------------------------------------------------------


def bilinear_taps(in_size: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each output index: the two input indices and the weight of the second, as in
    `F.interpolate(mode="bilinear", align_corners=False)` (source = (i + 0.5) * in / out - 0.5, clamped)."""
    source = ((torch.arange(out_size, dtype=torch.float64) + 0.5) * (in_size / out_size) - 0.5).clamp(min=0)
    low = source.floor().long().clamp(max=in_size - 1)
    high = (low + 1).clamp(max=in_size - 1)
    return low.to(device), high.to(device), (source - low).float().to(device)


def resized_bands(logits: torch.Tensor, size: tuple[int, int]) -> Iterator[tuple[slice, torch.Tensor]]:
    """Bilinear resizing of (N, C, h, w) logits to `size`, yielded band of rows by band: (row slice, band).

    Each band blends the two source rows of each of its rows (the weights `F.interpolate` uses), then resizes the
    columns with `F.interpolate` itself (its rows map one to one), so the full-resolution logits never exist.
    """
    height, width = size
    row_low, row_high, row_weight = bilinear_taps(logits.shape[2], height, logits.device)
    row_weight = row_weight.to(logits.dtype)
    band = max(1, BAND_ELEMENTS // (logits.shape[0] * logits.shape[1] * width))
    for start in range(0, height, band):
        rows = slice(start, min(start + band, height))
        blended_rows = torch.lerp(logits.index_select(2, row_low[rows]), logits.index_select(2, row_high[rows]),
                                  row_weight[rows].view(1, 1, -1, 1))
        yield rows, F.interpolate(blended_rows, size=(blended_rows.shape[2], width), mode="bilinear",
                                  align_corners=False)


# --- fusion -------------------------------------------------------------------------------------------------


class MeanFusion:
    """Mean of the passes' probabilities; the class is its argmax, the confidence its maximum."""

    def __init__(self, batch: int, classes: int, size: tuple[int, int], device: torch.device):
        self.total = torch.zeros(batch, classes, *size, device=device)
        self.passes = 0

    @staticmethod
    def buffer_bytes(batch: int, classes: int, size: tuple[int, int]) -> int:
        """Bytes of the buffers this fusion keeps: the probability sums."""
        return 4 * batch * classes * size[0] * size[1]

    def update(self, rows: slice, probs: torch.Tensor) -> None:
        """Add one band of one pass's probabilities (N, C, rows, W)."""
        self.total[:, :, rows].add_(probs)

    def finish_pass(self) -> None:
        """Count one complete pass."""
        self.passes += 1

    def output(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(confidence, classes), each (N, H, W)."""
        best, classes = self.total.max(dim=1)
        return best / self.passes, classes


class VotingFusion:
    """Each pass votes for its argmax class; the most voted class wins (lowest index on ties), and its
    confidence is the mean probability of the passes that voted for it.

    The authors' script means the same but returns the winning vote count in place of the class (the two outputs
    of `votes.max` are swapped there); we return the class.
    """

    def __init__(self, batch: int, classes: int, size: tuple[int, int], device: torch.device):
        self.votes = torch.zeros(batch, classes, *size, dtype=torch.int16, device=device)
        self.prob_sums = torch.zeros(batch, classes, *size, device=device)

    @staticmethod
    def buffer_bytes(batch: int, classes: int, size: tuple[int, int]) -> int:
        """Bytes of the buffers this fusion keeps: 16-bit votes and the probability sums."""
        return 6 * batch * classes * size[0] * size[1]

    def update(self, rows: slice, probs: torch.Tensor) -> None:
        """Add one band's votes and the winning probabilities."""
        best, winner = probs.max(dim=1, keepdim=True)
        self.votes[:, :, rows].scatter_add_(1, winner, torch.ones_like(winner, dtype=torch.int16))
        self.prob_sums[:, :, rows].scatter_add_(1, winner, best)

    def finish_pass(self) -> None:
        """Nothing to count: votes are the count."""

    def output(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(confidence, classes), each (N, H, W)."""
        votes, classes = self.votes.max(dim=1, keepdim=True)
        confidence = self.prob_sums.gather(1, classes) / votes.clamp(min=1)
        return confidence.squeeze(1), classes.squeeze(1)


class MaxFusion:
    """The class of the single most confident pass at each pixel (first pass wins ties)."""

    def __init__(self, batch: int, classes: int, size: tuple[int, int], device: torch.device):
        self.best = torch.zeros(batch, *size, device=device)
        self.classes = torch.zeros(batch, *size, dtype=torch.long, device=device)

    @staticmethod
    def buffer_bytes(batch: int, classes: int, size: tuple[int, int]) -> int:
        """Bytes of the buffers this fusion keeps: the best probability and its class."""
        return 12 * batch * size[0] * size[1]

    def update(self, rows: slice, probs: torch.Tensor) -> None:
        """Replace the pixels where this band is more confident than every earlier pass."""
        best, classes = probs.max(dim=1)
        better = best > self.best[:, rows]
        self.best[:, rows] = torch.where(better, best, self.best[:, rows])
        self.classes[:, rows] = torch.where(better, classes, self.classes[:, rows])

    def finish_pass(self) -> None:
        """Nothing to count."""

    def output(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(confidence, classes), each (N, H, W)."""
        return self.best, self.classes


FUSIONS = {"mean": MeanFusion, "voting": VotingFusion, "max": MaxFusion}


# --- the predictor ------------------------------------------------------------------------------------------


class SegmentationPredictor:
    """Runs a segmentation network (image -> logits at any stride) with multi-scale, flipped test-time
    augmentation; the network is an argument so that any module with that call contract can be used.
    `precision` bf16 (or fp16, CUDA only) runs a folded half-precision copy of it; fusion stays in float32."""

    def __init__(
        self,
        model: nn.Module,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        long_side: int | None = 2048,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        fusion: str = "mean",
        interpolation: str = "bilinear",
        precision: str = "fp32",
    ):
        if long_side is not None and (not isinstance(long_side, int) or long_side <= 0):
            raise InvalidArgumentError(f"long_side must be a positive integer (or None: keep size), got {long_side!r}")
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise InvalidArgumentError(f"mean and std need 3 values each, std > 0; got mean={mean}, std={std}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.long_side = long_side
        self.scales = check_scales(scales)
        self.flip = bool(flip)
        self.fusion = check_fusion(fusion)
        self.resample = resample_filter(interpolation)
        self.precision = check_precision(precision)
        # eval mode: the head's evaluation-time pooling, frozen norm statistics; bf16/fp16: a folded copy
        self.model = inference_model(model, precision)

    @classmethod
    def from_weights(cls, weights: str = DEFAULT_WEIGHTS, *, progress: bool = True,
                     device: str | torch.device | None = None, **options: Any):
        """A predictor for registered segmentation weights (or an architecture's default ones), or a segmentation
        fine-tuning RUN directory: downloads and verifies the checkpoint (a run: its latest weights), and takes
        mean, std, the long side and the recommended test-time scales and flip (`tasks.inference_passes`) from the
        registry's (the run's) preprocessing; `options` override them. The network stays on the CPU unless
        `device` names another (checked by resolve_device)."""
        from ..factory import create_model
        from ..system.devices import resolve_device
        from ..weights.catalog import get_weights
        from .inference_passes import recommended_passes
        from .segmentation_runs import is_run_dir, run_predictor

        target = resolve_device(device) if device is not None else torch.device("cpu")
        if is_run_dir(weights):  # a segmentation fine-tuning run: its network, classes and preprocessing
            model, options = run_predictor(weights, {**recommended_passes(weights).options(), **options})
            return cls(model.to(target), **options)
        entry = get_weights(weights)
        if entry.task != "segmentation":
            raise InvalidArgumentError(
                f"{weights!r} is a {entry.task} model; `iabn-zoo list --json` shows the segmentation weights"
            )
        prep = entry.preprocessing
        options = {"mean": prep["mean"], "std": prep["std"], "interpolation": prep.get("interpolation", "bilinear"),
                   **recommended_passes(entry.name).options(), **options}
        model = create_model(entry.name, pretrained=True, progress=progress)
        return cls(model.to(target), **options)

    @property
    def device(self) -> torch.device:
        """Where the network's parameters live; inputs and fusion buffers go there."""
        param = next(self.model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """(1, 3, h, w) normalised tensor: RGB, longest side resized to `long_side` with Pillow, mean/std."""
        image = image.convert("RGB")
        size = working_size(image.size, self.long_side)
        if size != image.size:
            image = image.resize(size, self.resample)
        x = to_tensor(image)
        x.sub_(torch.tensor(self.mean).view(3, 1, 1)).div_(torch.tensor(self.std).view(3, 1, 1))
        return x.unsqueeze(0)

    def passes(self) -> list[tuple[float, bool]]:
        """The (scale, flipped) network runs, in the authors' order: each scale, then its flipped twin."""
        return [(scale, flipped) for scale in self.scales for flipped in ((False, True) if self.flip else (False,))]

    def run_pass(self, x: torch.Tensor, scale: float, flipped: bool) -> torch.Tensor:
        """The network's logits for one pass (at the network's own stride, flipped back if needed)."""
        if flipped:
            x = x.flip(-1)
        if scale != 1:
            size = [round(scale * side) for side in x.shape[-2:]]
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        logits = self.model(x)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 4:
            raise InvalidArgumentError("the segmentation network must return logits of shape (N, classes, h, w)")
        return logits.flip(-1) if flipped else logits

    @torch.no_grad()
    def fuse(self, x: torch.Tensor, *, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(confidence, classes), each (N, H, W) at the size of the normalised batch `x` (N, 3, H, W); with
        `progress`, a bar over the passes of an image of PASS_BAR_PIXELS or more."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise InvalidArgumentError(f"expected a normalised batch of shape (N, 3, H, W), got {tuple(x.shape)}")
        x = x.to(self.device)
        size = (x.shape[2], x.shape[3])
        fusion = None
        large = size[0] * size[1] >= PASS_BAR_PIXELS
        for scale, flipped in progress_bar(self.passes(), enabled=progress and large, desc="passes", leave=False):
            logits = self.run_pass(x, scale, flipped)
            if fusion is None:
                fusion = FUSIONS[self.fusion](x.shape[0], logits.shape[1], size, x.device)
            for rows, band in resized_bands(logits.float(), size):
                fusion.update(rows, torch.softmax(band, dim=1))
            fusion.finish_pass()
            del logits
        return fusion.output()

    def predict(self, image: Image.Image, *, progress: bool = False) -> SegmentationResult:
        """Segment one PIL image; class map and confidence at the image's own size (nearest resizing)."""
        confidence, classes = self.fuse(self.preprocess(image), progress=progress)
        width, height = image.size
        return SegmentationResult(
            classes=resize_nearest(classes[0], (height, width)).long(),
            confidence=resize_nearest(confidence[0], (height, width)).float(),
        )


def working_size(size: tuple[int, int], long_side: int | None) -> tuple[int, int]:
    """(width, height) of an image of `size` once its longest side is resized to `long_side` (None: kept)."""
    if long_side is None or max(size) == long_side:
        return tuple(size)
    factor = long_side / max(size)
    return tuple(max(1, int(side * factor)) for side in size)


def resize_nearest(values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resizing of an (H, W) map to `size` = (H', W'), picking exactly the source pixels Pillow's
    NEAREST picks (as the authors' script, which resized its PIL images); on CPU."""
    values = values.cpu()
    if tuple(values.shape) == tuple(size):
        return values
    rows = pillow_nearest_indices(values.shape[0], size[0])
    columns = pillow_nearest_indices(values.shape[1], size[1])
    return values[rows][:, columns]


def pillow_nearest_indices(source: int, target: int) -> torch.Tensor:
    """For each of `target` positions along one axis, the source index Pillow's NEAREST resize takes (its
    fixed-point arithmetic differs from floor((i + 0.5) * source / target) at some positions)."""
    line = Image.frombytes("I", (source, 1), array("i", range(source)).tobytes())
    picked = line.resize((target, 1), Image.NEAREST)
    return torch.frombuffer(bytearray(picked.tobytes()), dtype=torch.int32).long()
