"""Classifying image files with a zoo network: the weights' own preprocessing, then the top-k classes with names.

Each image is read and checked on its own, so one unreadable file is reported in its result and the others are
still classified.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..errors import DataError, bad_argument
from ..system.progress import progress_bar
from .classifiers import DEFAULT_PREPROCESSING


@dataclass(frozen=True)
class ClassScore:
    """One of the top classes of an image: its output index, name and softmax probability."""

    index: int
    name: str
    probability: float


@dataclass(frozen=True)
class ImagePrediction:
    """The result for one image file: its top classes, or the error that kept it from being classified."""

    image: str
    classes: tuple[ClassScore, ...] = field(default_factory=tuple)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the image was read and classified."""
        return self.error is None


def preprocessing_transform(preprocessing: Mapping | None = None) -> Callable:
    """Pillow image -> normalised (3, crop, crop) tensor: shorter side to `resize`, center crop, mean/std."""
    from ..data.transforms import eval_transform

    options = {**DEFAULT_PREPROCESSING, **(preprocessing or {})}
    return eval_transform(int(options["crop"]), int(options["resize"]), mean=tuple(options["mean"]),
                          std=tuple(options["std"]), interpolation=str(options["interpolation"]))


def top_classes(logits: torch.Tensor, names: Sequence[str], topk: int) -> list[tuple[ClassScore, ...]]:
    """The `topk` most probable classes of each row of `logits` (N, classes), most probable first."""
    if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1:
        raise bad_argument("topk", f"must be an integer >= 1, got {topk!r}")
    if logits.dim() != 2 or logits.shape[1] != len(names):
        raise bad_argument("names", f"has {len(names)} class names, which do not match logits of shape "
                                    f"{tuple(logits.shape)}")
    probabilities = logits.float().softmax(dim=1)
    values, indices = probabilities.topk(min(topk, len(names)), dim=1)
    return [tuple(ClassScore(int(i), names[int(i)], float(v)) for v, i in zip(row_values, row_indices))
            for row_values, row_indices in zip(values, indices)]


def predict_images(model: nn.Module, paths: Sequence[str | os.PathLike], *, names: Sequence[str],
                   preprocessing: Mapping | None = None, topk: int = 5, batch_size: int = 8,
                   progress: bool = False, precision: str = "fp32") -> list[ImagePrediction]:
    """Classify every file of `paths` (in order, `batch_size` images at a time, a bar over many images with
    `progress`); unreadable images get a result with `error` set. `precision` (fp32, bf16, fp16 on CUDA) is that of
    the weights and activations; probabilities are float32 either way."""
    from ..data.images import open_rgb
    from .precision import check_precision, inference_model

    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise bad_argument("batch_size", f"must be an integer >= 1, got {batch_size!r}")
    check_precision(precision, next(model.parameters()).device)
    model = inference_model(model, precision)
    transform = preprocessing_transform(preprocessing)
    results: dict[int, ImagePrediction] = {}
    ready: list[tuple[int, torch.Tensor]] = []
    with progress_bar(total=len(paths), enabled=progress and len(paths) > batch_size, desc="predict",
                      unit="image", leave=False) as bar:
        for position, path in enumerate(paths):
            try:
                ready.append((position, transform(open_rgb(path))))
            except DataError as error:
                results[position] = ImagePrediction(str(path), error=str(error))
                bar.update()
            if ready and (len(ready) == batch_size or position == len(paths) - 1):
                logits = classify(model, torch.stack([tensor for _, tensor in ready]))
                for (index, _), classes in zip(ready, top_classes(logits, names, topk)):
                    results[index] = ImagePrediction(str(paths[index]), classes)
                bar.update(len(ready))
                ready = []
    return [results[position] for position in range(len(paths))]


def classify(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Logits of `batch` in evaluation mode without gradients; the model's train/eval mode is restored."""
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        with torch.no_grad():
            return model(batch.to(device)).cpu()
    finally:
        model.train(was_training)
