"""Top-1 / top-5 accuracy of a network over a folder data set, with a center crop or ten crops.

The network is a registered weights or architecture name (its published weights and preprocessing), or a
fine-tuning RUN directory (its latest weights, classes and preprocessing). Folder names are matched to the
network's outputs by class name (a run's classes, or an ImageNet synset id / label name); a folder set of
exactly the network's size whose names match nothing is taken in sorted order, as torchvision's ImageFolder does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..data.folders import ImageFolder, find_classes
from ..data.labels import BUILTIN_LABELS, read_class_csv
from ..data.transforms import eval_transform
from ..errors import DataError, InvalidArgumentError
from ..factory import create_model, load_run, resolve_weights
from ..weights.catalog import default_weights_for
from ..weights.run_reader import is_run_dir, read_run
from .accuracy import Tally, count_correct
from .precision import check_precision, inference_model


@dataclass(frozen=True)
class Evaluable:
    """A network ready to score: its output class names and the preprocessing it was trained with."""

    model: nn.Module
    classes: list[str] | None  # None: outputs are unnamed and folders map in sorted order
    aliases: list[set[str]]  # per output, every name a folder may carry for it
    preprocessing: dict[str, Any]


def load_evaluable(model: str | os.PathLike[str]) -> Evaluable:
    """The network `model` names: a run directory, or a weights or architecture name (published weights)."""
    if is_run_dir(model):
        info = read_run(model)
        return Evaluable(load_run(model), list(info.classes), [{name} for name in info.classes], info.preprocessing)
    weights = resolve_weights(str(model)) or default_weights_for(str(model))
    network = create_model(weights.name, pretrained=True).eval()
    return Evaluable(network, None, label_aliases(weights.labels, weights.num_classes), dict(weights.preprocessing))


def label_aliases(labels: str | None, num_classes: int) -> list[set[str]]:
    """Per output, the names a folder may use for it: every column of the label CSV (synset id, name, ...)."""
    if labels is None:
        return [set() for _ in range(num_classes)]
    rows = read_class_csv(BUILTIN_LABELS.get(labels, labels))
    return [{value for key, value in row.items() if key != "index" and value} for row in rows]


def class_index_map(folders: list[str], aliases: list[set[str]], root: Path) -> dict[str, int]:
    """Folder name -> network output, by name; in sorted order when no name matches and the counts agree."""
    by_alias = {alias: index for index, names in enumerate(aliases) for alias in names}
    matched = {folder: by_alias[folder] for folder in folders if folder in by_alias}
    if len(matched) == len(folders):
        return matched
    if not matched and len(folders) == len(aliases):
        return {folder: index for index, folder in enumerate(folders)}
    unknown = [folder for folder in folders if folder not in matched]
    shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
    raise DataError(f"class folder(s) of {root} that the network does not know: {shown}; name the folders after "
                    f"its classes, or give exactly {len(aliases)} folders in output order")


def evaluation_root(data_dir: str | os.PathLike[str]) -> Path:
    """DATA itself in the ImageFolder layout, or DATA/val when DATA holds a split with class sub-folders."""
    data_dir = Path(data_dir)
    val = data_dir / "val"
    if val.is_dir() and any(p.is_dir() for p in val.iterdir()):
        return val
    return data_dir


@torch.no_grad()
def evaluate_model(model: nn.Module, dataset: torch.utils.data.Dataset, *, ten_crops: bool = False,
                   batch_size: int = 32, num_workers: int = 0, device: str | torch.device = "cpu",
                   precision: str = "fp32") -> dict[str, Any]:
    """Top-1/top-5 (percent) of `model` over `dataset` at `precision` (fp32, bf16, fp16 on CUDA); with
    `ten_crops` the dataset yields (10, C, H, W) stacks and the logits of the ten crops are averaged, as in the
    authors' test script."""
    check_precision(precision, device)
    model = inference_model(model.to(device), precision)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    tally = Tally()
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        if ten_crops:
            batch, crops = images.shape[:2]
            logits = model(images.flatten(0, 1)).view(batch, crops, -1).mean(dim=1)
        else:
            logits = model(images)
        tally.add(0.0, *count_correct(logits.float(), targets), targets.numel())
    return {"top1": tally.top1_percent, "top5": tally.top5_percent, "images": tally.images}


def evaluate(model: str | os.PathLike[str], data_dir: str | os.PathLike[str], *, ten_crops: bool = False,
             scale: int | None = None, crop: int | None = None, batch_size: int = 32, num_workers: int = 2,
             device: str | None = None, on_error: str = "skip", precision: str = "fp32") -> dict[str, Any]:
    """Top-1/top-5 (percent) and image count of `model` (name or RUN directory) over the folder `data_dir`.

    `scale` (shorter side) and `crop` default to the network's preprocessing (ImageNet: 256 and 224);
    `precision` is fp32, bf16 or fp16 (CUDA only)."""
    if not isinstance(batch_size, int) or batch_size < 1 or not isinstance(num_workers, int) or num_workers < 0:
        raise InvalidArgumentError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size!r} and "
                                   f"{num_workers!r}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_precision(precision, device)
    network = load_evaluable(model)
    dataset = evaluation_set(network, data_dir, ten_crops=ten_crops, scale=scale, crop=crop, on_error=on_error)
    scores = evaluate_model(network.model, dataset, ten_crops=ten_crops, batch_size=batch_size,
                            num_workers=num_workers, device=device, precision=precision)
    return {"model": str(model), "data": str(dataset.root), **scores, "ten_crops": ten_crops,
            "scale": dataset.scale, "crop": dataset.crop, "skipped": len(dataset.skipped), "precision": precision}


def evaluation_set(network: Evaluable, data_dir: str | os.PathLike[str], *, ten_crops: bool = False,
                   scale: int | None = None, crop: int | None = None, on_error: str = "skip") -> ImageFolder:
    """The images of `data_dir` as `network` is scored on them: its classes mapped to folders, its preprocessing
    (`scale` and `crop` override it); the folder gets `scale` and `crop` attributes saying what was used."""
    root = evaluation_root(data_dir)
    mapping = class_index_map(find_classes(root), network.aliases, root)
    prep = network.preprocessing
    crop = crop if crop is not None else int(prep.get("crop", 224))
    scale = scale if scale is not None else int(prep.get("resize", round(crop * 256 / 224)))
    transform = eval_transform(crop, scale, ten_crops=ten_crops, mean=prep.get("mean", (0.485, 0.456, 0.406)),
                               std=prep.get("std", (0.229, 0.224, 0.225)),
                               interpolation=prep.get("interpolation", "bilinear"))
    dataset = ImageFolder(root, transform, class_to_idx=mapping, on_error=on_error)
    dataset.scale, dataset.crop = scale, crop
    return dataset
