"""What an export's MODEL refers to: an nn.Module, an architecture, a weights name or a fine-tuning RUN directory.

Each becomes a `Source`: how to build the network (downloading and verifying published weights), a blueprint of it
on the meta device (no weights, nothing downloaded) for the checks that must come before any work, and what the
exported file records about where its weights came from.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..data.labels import class_names
from ..errors import InvalidArgumentError
from ..factory import build_run_model, create_model, load_run, resolve_weights
from ..models import list_archs
from ..system.hashing import file_md5
from ..weights.catalog import Weights, default_weights_for, is_weights
from ..weights.run_reader import MODEL_FILE, is_run_dir, read_run


@dataclass(frozen=True)
class Source:
    """A network to export: `build()` makes it (weights loaded), `blueprint()` makes its shape-only twin, `facts`
    say where it came from (weights name, source md5, preprocessing, class names, license)."""

    build: Callable[[], nn.Module]
    blueprint: Callable[[], nn.Module]
    facts: dict[str, Any] = field(default_factory=dict)
    size: int | None = None  # the side it was trained or published at (its preprocessing crop), if recorded


def on_meta(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """`build` run on the meta device: the network's structure without allocating or loading anything."""

    def blueprint() -> nn.Module:
        list_archs()  # import the family modules outside the meta context
        with torch.device("meta"):
            return build()

    return blueprint


def weights_facts(weights: Weights) -> dict[str, Any]:
    """What an export records about published (or registered) weights."""
    prep = weights.preprocessing
    return {"weights": weights.name, "arch": weights.arch, "task": weights.task, "source_md5": weights.md5,
            "mean": list(prep.get("mean", ())), "std": list(prep.get("std", ())),
            "class_names": class_names(weights.labels, weights.num_classes), "license": weights.license}


def module_source(model: nn.Module) -> Source:
    """A network given as a module: exported as it is; its `classes` attribute, if any, names its outputs."""
    facts: dict[str, Any] = {"weights": None, "arch": type(model).__name__}
    if isinstance(getattr(model, "classes", None), (list, tuple)):
        facts["class_names"] = list(model.classes)
    return Source(lambda: model, lambda: meta_twin(model), facts)


def meta_twin(model: nn.Module) -> nn.Module:
    """A copy of `model` on the meta device: its structure, for shape checks that must not touch its state."""
    return copy.deepcopy(model).to("meta")


def run_source(run_dir: str | os.PathLike[str]) -> Source:
    """A fine-tuning RUN directory: its latest weights, classes and preprocessing; the license of the weights it
    was fine-tuned from when those are registered."""
    info = read_run(run_dir)
    base = info.config.get("model")
    license_text = resolve_weights(base).license if isinstance(base, str) and is_weights(base) else ""
    prep = info.preprocessing
    facts = {"weights": None, "run": Path(run_dir).resolve().name, "arch": info.arch, "task": info.task,
             "source_md5": file_md5(info.run_dir / MODEL_FILE), "mean": list(prep.get("mean", ())),
             "std": list(prep.get("std", ())), "class_names": list(info.classes), "license": license_text}
    return Source(lambda: load_run(run_dir), on_meta(lambda: build_run_model(info)), facts,
                  size=prep.get("crop"))


def name_source(name: str, *, pretrained: bool, progress: bool) -> Source:
    """An architecture or weights name; with `pretrained`, the published weights (an architecture's best)."""
    weights = resolve_weights(name)  # unknown names raise here, with suggestions
    if weights is None and pretrained:
        weights = default_weights_for(name)
    if weights is None:
        return Source(lambda: create_model(name, backbone_weights=None),
                      on_meta(lambda: create_model(name, backbone_weights=None)),
                      {"weights": None, "arch": name, "source_md5": None, "license": ""})
    size = weights.preprocessing.get("crop")
    if not pretrained:
        facts = {**weights_facts(weights), "weights": None, "source_md5": None, "license": ""}
        return Source(lambda: create_model(weights.name, pretrained=False, backbone_weights=None),
                      on_meta(lambda: create_model(weights.name, pretrained=False, backbone_weights=None)), facts,
                      size)
    return Source(lambda: create_model(weights.name, pretrained=True, progress=progress),
                  on_meta(lambda: create_model(weights.name, pretrained=False)), weights_facts(weights), size)


def resolve_source(model: nn.Module | str | os.PathLike[str], *, pretrained: bool = True,
                   progress: bool = True) -> Source:
    """The `Source` of an export's MODEL argument."""
    if isinstance(model, nn.Module):
        return module_source(model)
    if not isinstance(model, (str, os.PathLike)):
        raise InvalidArgumentError(f"MODEL must be an nn.Module, an architecture or weights name, or a fine-tuning "
                                   f"RUN directory, got {type(model).__name__}")
    if isinstance(model, os.PathLike) or (not is_weights(model) and is_run_dir(model)):
        if not is_run_dir(model):
            raise InvalidArgumentError(f"{model} is not a fine-tuning RUN directory (it has no config.json)")
        return run_source(model)
    return name_source(model, pretrained=pretrained, progress=progress)
