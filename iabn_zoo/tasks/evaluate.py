"""Top-1 / top-5 accuracy of a network over a folder data set, with a center crop or ten crops.

The network is a registered weights or architecture name (its published weights and preprocessing), or a
fine-tuning RUN directory (its latest weights, classes and preprocessing). Folder names are matched to the
network's outputs by class name (a run's classes, or an ImageNet synset id / label name); a folder set of
exactly the network's size whose names match nothing is taken in sorted order, as torchvision's ImageFolder does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..data.folders import ImageFolder, find_classes
from ..data.transforms import eval_transform
from ..errors import DataError, bad_argument
from ..system.distributed import highest, joined_group, process_device, shard, summed
from ..system.progress import progress_bar
from ..system.resources import out_of_memory_guard
from .accuracy import TOPK, Tally, count_correct
from .classifiers import Classifier, load_classifier, model_preprocessing
from .footprint import check_inference_fits
from .precision import check_precision, inference_model


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


SPLIT_NAMES = frozenset({"train", "val", "test"})


def evaluation_root(data_dir: str | os.PathLike[str]) -> Path:
    """DATA itself in the ImageFolder layout, or DATA/val when DATA holds a split with class sub-folders."""
    data_dir = Path(data_dir)
    val = data_dir / "val"
    if val.is_dir() and any(p.is_dir() for p in val.iterdir()):
        return val
    splits = {p.name for p in data_dir.iterdir() if p.is_dir()} if data_dir.is_dir() else set()
    if splits and splits <= SPLIT_NAMES:  # train/ and val/ are splits, never classes
        raise DataError(f"{data_dir} holds the split folder(s) {', '.join(sorted(splits))} but {val} holds no class "
                        "folders; put the validation images in DATA/val/CLASS/ (or name a folder of class folders)")
    return data_dir


@torch.no_grad()
def evaluate_model(model: nn.Module, dataset: torch.utils.data.Dataset, *, ten_crops: bool = False,
                   batch_size: int = 32, num_workers: int = 0, device: str | torch.device = "cpu",
                   progress: bool = False, precision: str = "fp32") -> dict[str, Any]:
    """Top-1/top-5 (percent; top-5 None for five outputs or fewer, where it is always 100) of `model` over
    `dataset` at `precision` (fp32, bf16, fp16 on CUDA); with `ten_crops` the dataset yields (10, C, H, W) stacks
    and the logits of the ten crops are averaged, as in the authors' script."""
    check_precision(precision, device)
    model = inference_model(model.to(device), precision)
    part = torch.utils.data.Subset(dataset, shard(len(dataset)))  # under torchrun, this rank's share
    loader = torch.utils.data.DataLoader(part, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    tally, outputs = Tally(), 0
    with progress_bar(total=len(part), enabled=progress, desc="evaluate", unit="image", leave=False) as bar:
        for images, targets in loader:
            images, targets = images.to(device), targets.to(device)
            if ten_crops:
                batch, crops = images.shape[:2]
                logits = model(images.flatten(0, 1)).view(batch, crops, -1).mean(dim=1)
            else:
                logits = model(images)
            outputs = logits.shape[1]
            tally.add(0.0, *count_correct(logits.float(), targets), targets.numel())
            bar.update(targets.numel())
    counts = summed(torch.tensor([tally.top1, tally.top5, tally.images]), torch.device(device))
    tally = Tally(top1=int(counts[0]), top5=int(counts[1]), images=int(counts[2]))
    outputs = highest(outputs, torch.device(device))  # a rank may have had no image
    top5 = tally.top5_percent if outputs > TOPK else None  # with TOPK classes or fewer it is always 100%
    return {"top1": tally.top1_percent, "top5": top5, "images": tally.images}


def evaluate(model: str | os.PathLike[str], data_dir: str | os.PathLike[str], *, ten_crops: bool = False,
             scale: int | None = None, crop: int | None = None, batch_size: int = 32, num_workers: int = 2,
             device: str | None = None, on_error: str = "skip", progress: bool = True,
             precision: str = "fp32", pretrained: bool = True) -> dict[str, Any]:
    """Top-1/top-5 (percent) and image count of `model` (what create_model accepts, or a RUN directory) over the
    folder `data_dir`. `scale` (shorter side) and `crop` default to the network's preprocessing (ImageNet: 256 and
    224); `precision` is fp32, bf16 or fp16 (CUDA only). Every option, the data folder and the memory the sizes need
    are checked before the network is loaded. Under torchrun each rank scores its share of the images and every
    rank returns the scores of them all."""
    check_sizes(batch_size=batch_size, num_workers=num_workers, scale=scale, crop=crop)
    target = process_device(device)
    check_precision(precision, target)
    prep = model_preprocessing(model)
    root = evaluation_root(data_dir)
    folders = find_classes(root)
    crop = crop if crop is not None else int(prep["crop"])
    scale = scale if scale is not None else int(prep.get("resize", round(crop * 256 / 224)))
    check_inference_fits(model, crop, batch_size * (10 if ten_crops else 1), target, resize=scale,
                         lower=("crop", "scale", "batch_size"))
    network = load_classifier(model, progress=progress, pretrained=pretrained)
    dataset = evaluation_set(network, root, ten_crops=ten_crops, scale=scale, crop=crop, on_error=on_error,
                             folders=folders)
    with out_of_memory_guard(f"evaluating at {crop} px with a batch of {batch_size}", ("crop", "batch_size")), \
            joined_group(target.type):
        scores = evaluate_model(network.model, dataset, ten_crops=ten_crops, batch_size=batch_size,
                                num_workers=num_workers, device=target, progress=progress, precision=precision)
    return {"model": str(model), "data": str(root), **scores, "ten_crops": ten_crops, "scale": scale, "crop": crop,
            "skipped": len(dataset.skipped), "precision": precision}


def evaluation_set(network: Classifier, data_dir: str | os.PathLike[str], *, ten_crops: bool = False,
                   scale: int | None = None, crop: int | None = None, on_error: str = "skip",
                   folders: list[str] | None = None) -> ImageFolder:
    """The images of `data_dir` (or its val/) as `network` is scored on them: its outputs mapped to the class
    folders, its preprocessing (`scale` and `crop` override the shorter side and the crop)."""
    root = evaluation_root(data_dir)
    mapping = class_index_map(folders if folders is not None else find_classes(root), network.aliases, root)
    prep = network.preprocessing
    crop = crop if crop is not None else int(prep["crop"])
    scale = scale if scale is not None else int(prep.get("resize", round(crop * 256 / 224)))
    transform = eval_transform(crop, scale, ten_crops=ten_crops, mean=prep["mean"], std=prep["std"],
                               interpolation=prep["interpolation"])
    return ImageFolder(root, transform, class_to_idx=mapping, on_error=on_error)


def check_sizes(**sizes: int | None) -> None:
    """Batch size >= 1, worker count >= 0, and scale and crop (when given) >= 1, each named on its own."""
    for name, value in sizes.items():
        low = 0 if name == "num_workers" else 1
        if value is None and name in ("scale", "crop"):
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise bad_argument(name, f"must be an integer >= {low}, got {value!r}")
