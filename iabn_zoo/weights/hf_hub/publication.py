"""What a repository is made from: a finished fine-tuning RUN (its weights file, classes, final validation metrics,
training configuration, curves and sample pictures) or a registered weights name (a mirror of the published
checkpoint: verified by md5, converted to safetensors, the original file's name and md5 kept in config.json).

Everything is checked here before anything is written or sent: a folder that is not a finished run, an unknown
name and a Hub name (already on the Hub) are refused.
"""

from __future__ import annotations

import csv
import importlib.resources
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...errors import InvalidArgumentError, UnknownNameError
from ...system.hashing import file_md5
from ..catalog import Weights, get_weights, is_weights, list_weights
from ..loading import CONVERTED_FORMAT, load_weights_state_dict
from ..run_reader import (
    CLASSES_FILE,
    CONFIG_FILE,
    MODEL_FILE,
    RunInfo,
    classes_csv_bytes,
    is_run_dir,
    read_json,
    read_metrics,
    read_run,
)
from .card import CardFacts, Metric
from .names import is_hub_name
from .repo_format import BUILTIN_LABELS, new_config

PICTURES = ("curves.png",)
SAMPLES = "samples"
LOCAL_PATHS = ("data_dir", "out_dir")  # a run's own folders: published by their last part only
METRIC_NAMES = {
    "top1": ("Top-1 accuracy (%)", "accuracy"), "top5": ("Top-5 accuracy (%)", "accuracy"),
    "top1_10crop": ("Top-1 accuracy, 10 crops (%)", "accuracy"),
    "top5_10crop": ("Top-5 accuracy, 10 crops (%)", "accuracy"),
    "top1_320": ("Top-1 accuracy at 320 px (%)", "accuracy"), "top5_320": ("Top-5 accuracy at 320 px (%)", "accuracy"),
    "miou": ("Mean IoU (%)", "mean_iou"), "pixel_accuracy": ("Pixel accuracy (%)", "pixel_accuracy"),
}
KNOWN_DATASETS = {"imagenet": ({"name": "ImageNet-1k", "type": "imagenet-1k", "split": "validation"},
                               ["imagenet-1k"]),
                  "vistas": ({"name": "Mapillary Vistas", "type": "mapillary-vistas", "split": "validation"}, [])}


@dataclass
class Publication:
    """A repository's content before it is written: config.json (its "weights" checksums still to fill), the
    tensors (a file to copy, or tensors to write with their metadata), classes.csv, files to copy, card facts."""

    document: dict[str, Any]
    classes_csv: bytes
    card: CardFacts
    tensors_file: Path | None = None
    tensors: dict[str, torch.Tensor] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)  # path in the repository -> file to copy


def check_publishable(model: str | os.PathLike[str]) -> None:
    """Refuse, before any work, a MODEL that cannot be published (see the module's description)."""
    if is_run_dir(model):
        finished_run(Path(model))
    elif isinstance(model, os.PathLike) or not is_weights(str(model)) or is_hub_name(str(model)):
        _refuse(model)


def publication(model: str | os.PathLike[str], *, progress: bool = True) -> Publication:
    """The content of the repository MODEL (a fine-tuning RUN directory or a registered weights name) makes."""
    check_publishable(model)
    if is_run_dir(model):
        return run_publication(Path(model))
    return weights_publication(get_weights(str(model)), progress=progress)


def _refuse(model: str | os.PathLike[str]) -> None:
    text = os.fspath(model)
    if is_hub_name(text):
        raise InvalidArgumentError(f"{text} is already on the Hub; publish a fine-tuning RUN directory or a "
                                   "registered weights name")
    if Path(text).exists():
        raise InvalidArgumentError(f"{text} is not a fine-tuning run (it has no {CONFIG_FILE}); give the --out folder "
                                   "of a finished `iabn-zoo finetune`, or a registered weights name")
    raise UnknownNameError("weights name (nor a fine-tuning RUN directory)", text, list_weights())


def finished_run(run_dir: Path) -> tuple[RunInfo, list[dict[str, Any]]]:
    """The run's description and metrics, when it trained every epoch it was configured for and has its weights."""
    info = read_run(run_dir)
    metrics = read_metrics(run_dir)
    epochs = info.config.get("epochs")
    done = int(metrics[-1].get("epoch", len(metrics))) if metrics else 0
    if not (run_dir / MODEL_FILE).is_file() or not isinstance(epochs, int) or done < epochs:
        raise InvalidArgumentError(
            f"{run_dir} is not a finished run: it trained {done} of its {epochs} epoch(s)"
            + ("" if (run_dir / MODEL_FILE).is_file() else f" and has no {MODEL_FILE}")
            + "; finish it first (`iabn-zoo finetune ... --resume`), then publish it")
    return info, metrics


def run_publication(run_dir: Path) -> Publication:
    """A finished fine-tuning run as a repository."""
    info, metrics = finished_run(run_dir)
    described = read_json(run_dir / CONFIG_FILE)
    last = metrics[-1]
    keys = ("miou", "pixel_accuracy") if info.task == "segmentation" else ("top1", "top5")
    scores = {key: float(last[f"val_{key}"]) for key in keys if isinstance(last.get(f"val_{key}"), (int, float))}
    training = {key: (Path(value).name if key in LOCAL_PATHS and isinstance(value, str) else value)
                for key, value in info.config.items()}
    backbone = described.get("backbone_weights")
    source = described.get("source_weights") or (backbone if backbone not in (None, "none") else None)
    license_text = _license_of(source)
    per_class = last.get("val_per_class_iou") if info.task == "segmentation" else None
    extra = {"source_weights": described.get("source_weights")}
    if info.task == "segmentation":
        extra.update(backbone_weights=described.get("backbone_weights"),
                     ignore_index=described.get("ignore_index", 255), per_class_iou=per_class)
    document = new_config(
        task=info.task, arch=info.arch, arch_kwargs=dict(info.arch_kwargs), bn_mode=info.bn_mode,
        classes=list(info.classes), labels=None, preprocessing=dict(info.preprocessing), weights={},
        source={"kind": "run", "name": run_dir.resolve().name, "file": MODEL_FILE,
                "md5": file_md5(run_dir / MODEL_FILE)},
        metrics=scores, license=license_text, description=_run_summary(info, training, source),
        config=training, **extra)
    files = {name: run_dir / name for name in PICTURES if (run_dir / name).is_file()}
    if (run_dir / SAMPLES).is_dir():
        files.update({f"{SAMPLES}/{path.name}": path for path in sorted((run_dir / SAMPLES).glob("*.png"))})
    files["metrics.jsonl"] = run_dir / "metrics.jsonl"
    data = training.get("data_dir") or "its data"
    card = CardFacts(
        title=run_dir.resolve().name, summary=document["description"], task=info.task, arch=info.arch,
        num_classes=info.num_classes, bn_mode=info.bn_mode, license=license_text,
        preprocessing=dict(info.preprocessing), metrics=_metrics(scores),
        dataset={"name": data, "type": data} if scores else None,
        per_class_iou=list(zip(info.classes, per_class)) if isinstance(per_class, list) else [],
        training=training, pictures=[name for name in files if name.endswith(".png")])
    return Publication(document, classes_bytes(run_dir, info.classes), card, tensors_file=run_dir / MODEL_FILE,
                       files=files)


def weights_publication(weights: Weights, *, progress: bool = True) -> Publication:
    """A registered checkpoint as a mirror: its verified tensors converted to safetensors."""
    tensors = load_weights_state_dict(weights, progress=progress)
    trained_mode = weights.arch_kwargs.get("bn_mode", "inplace")
    classes_csv = label_file(weights.labels, weights.num_classes)
    classes = [row["name"] for row in _rows(classes_csv)]
    labels = weights.labels if weights.labels in BUILTIN_LABELS else None
    document = new_config(
        task=weights.task, arch=weights.arch, arch_kwargs=dict(weights.arch_kwargs),
        bn_mode="inplace" if trained_mode == "sync" else trained_mode, classes=classes, labels=labels,
        preprocessing=dict(weights.preprocessing), weights={},
        source={"kind": "published", "name": weights.name, "file": weights.file_name, "md5": weights.md5,
                "urls": list(weights.urls)},
        metrics=dict(weights.metrics), license=weights.license, description=weights.description, config={},
        source_weights=weights.name)
    dataset, datasets = KNOWN_DATASETS.get(str(weights.labels), (None, []))
    card = CardFacts(
        title=weights.name, summary=_mirror_summary(weights), task=weights.task, arch=weights.arch,
        num_classes=weights.num_classes, bn_mode=trained_mode, license=weights.license,
        preprocessing=dict(weights.preprocessing), metrics=_metrics(weights.metrics), dataset=dataset,
        datasets=datasets)
    return Publication(document, classes_csv, card, tensors=tensors,
                       metadata={"format": CONVERTED_FORMAT, "source": weights.file_name, "md5": weights.md5})


def _license_of(source: Any) -> str:
    """The licence a run inherits from the weights it started from ("" when it started from random weights)."""
    if not isinstance(source, str) or not is_weights(source):
        return ""
    try:
        return get_weights(source).license
    except UnknownNameError:
        return ""


def _run_summary(info: RunInfo, training: dict[str, Any], source: Any) -> str:
    start = f"from `{source}`" if isinstance(source, str) else "from random weights"
    what = "segments images into" if info.task == "segmentation" else "classifies images into"
    return (f"`{info.arch}` with In-Place Activated BatchNorm, fine-tuned {start} with `iabn-zoo finetune` on "
            f"`{training.get('data_dir')}` for {training.get('epochs')} epoch(s); it {what} {info.num_classes} "
            f"classes ({', '.join(info.classes[:8])}{', ...' if info.num_classes > 8 else ''}).")


def _mirror_summary(weights: Weights) -> str:
    return (f"{weights.description}. A mirror of the checkpoint `{weights.file_name}` (md5 `{weights.md5}`) "
            f"published by the authors of In-Place Activated BatchNorm, its tensors converted to safetensors with "
            f"the keys of iabn-zoo's `{weights.arch}`; `iabn-zoo` verifies them by the sha256 in config.json.")


def _metrics(scores: dict[str, float]) -> list[Metric]:
    named = {key: METRIC_NAMES.get(key, (key, key)) for key in scores}
    return [Metric(key=key, label=named[key][0], value=value, kind=named[key][1]) for key, value in scores.items()]


def classes_bytes(run_dir: Path, classes: tuple[str, ...]) -> bytes:
    """The run's classes.csv, or one written from its class list."""
    path = run_dir / CLASSES_FILE
    return path.read_bytes() if path.is_file() else classes_csv_bytes(list(classes))


def label_file(labels: str | None, num_classes: int) -> bytes:
    """The class CSV of a label set: a built-in one (package data of iabn_zoo.data, read as a file: this layer
    imports no code of data/), a CSV file, or `class N` names for none."""
    if labels is None:
        return classes_csv_bytes([f"class {index}" for index in range(num_classes)])
    if labels in BUILTIN_LABELS:
        return (importlib.resources.files("iabn_zoo.data") / "label_files" / f"{labels}_classes.csv").read_bytes()
    return Path(labels).read_bytes()


def _rows(data: bytes) -> list[dict[str, str]]:
    return sorted(csv.DictReader(io.StringIO(data.decode("utf-8"))), key=lambda row: int(row["index"]))
