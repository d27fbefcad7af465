"""The classifier a MODEL argument names, for evaluation and prediction: whatever `create_model` accepts.

A fine-tuning RUN directory gives its trained weights, classes and preprocessing; a weights name (or an architecture
with published weights, standing for its default ones) its checkpoint, label set and preprocessing; an architecture
without published weights a randomly initialised network (said once, since its answers mean nothing).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from ..data.labels import BUILTIN_LABELS, class_names, read_class_csv
from ..errors import DataError, InvalidArgumentError
from ..factory import create_model, load_run, resolve_weights
from ..weights.catalog import Weights, default_weights_for, is_weights, weights_for_arch
from ..weights.run_reader import CONFIG_FILE, is_run_dir, read_run

DEFAULT_PREPROCESSING = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "resize": 256, "crop": 224,
                         "interpolation": "bilinear"}


@dataclass(frozen=True)
class Classifier:
    """A network ready to classify: its output names, the names folders may use for each output, preprocessing."""

    model: nn.Module
    names: list[str]  # per output, the name to show
    aliases: list[set[str]]  # per output, every name a class folder may carry for it (none: sorted order)
    preprocessing: dict[str, Any]


def published_weights(model: str | os.PathLike[str]) -> Weights | None:
    """The weights a MODEL that is not a run directory loads (None: an architecture without published weights)."""
    name = str(model)
    if not is_weights(name) and (os.sep in name or Path(name).exists()):
        raise DataError(f"{name} is not a fine-tuning run directory (it holds no {CONFIG_FILE}); give the --out "
                        "folder of `iabn-zoo finetune`, or a weights or architecture name")
    weights = resolve_weights(name)
    if weights is None and weights_for_arch(name):
        weights = default_weights_for(name)
    if weights is not None and weights.task != "classification":
        raise InvalidArgumentError(f"{weights.name} is a {weights.task} model; use `iabn-zoo segment` for it")
    return weights


def model_preprocessing(model: str | os.PathLike[str]) -> dict[str, Any]:
    """The preprocessing `load_classifier(model)` will use, known without loading (or downloading) anything."""
    if is_run_dir(model):
        return {**DEFAULT_PREPROCESSING, **read_run(model).preprocessing}
    weights = published_weights(model)
    return {**DEFAULT_PREPROCESSING, **(weights.preprocessing if weights is not None else {})}


def load_classifier(model: str | os.PathLike[str], *, progress: bool = True, pretrained: bool = True) -> Classifier:
    """The network `model` names, in eval mode on the CPU: a RUN directory with its weights, a name with its
    published weights (refused when it has none), or with `pretrained=False` a randomly initialised one."""
    if is_run_dir(model):
        classes = list(read_run(model).classes)
        return Classifier(load_run(model), classes, [{name} for name in classes], model_preprocessing(model))
    weights = published_weights(model)
    if weights is None and pretrained:
        default_weights_for(str(model))  # raises: the one message for a name without weights
    if weights is None or not pretrained:
        network = create_model(str(model), pretrained=False).eval()
        outputs = network.get_classifier().out_features
        return Classifier(network, [f"class {index}" for index in range(outputs)], [set() for _ in range(outputs)],
                          dict(DEFAULT_PREPROCESSING))
    network = create_model(weights.name, pretrained=True, progress=progress).eval()
    return Classifier(network, class_names(weights.labels, weights.num_classes),
                      label_aliases(weights.labels, weights.num_classes),
                      {**DEFAULT_PREPROCESSING, **weights.preprocessing})


def label_aliases(labels: str | None, num_classes: int) -> list[set[str]]:
    """Per output, the names a folder may use for it: every column of the label CSV (synset id, name, ...)."""
    if labels is None:
        return [set() for _ in range(num_classes)]
    rows = read_class_csv(BUILTIN_LABELS.get(labels, labels))
    return [{value for key, value in row.items() if key != "index" and value} for row in rows]
