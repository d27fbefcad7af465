"""Reading a fine-tuning run directory (what `iabn-zoo finetune --out RUN` wrote) as a source of weights.

A RUN directory holds
  config.json                  the run's configuration, class names, architecture and preprocessing;
  model.safetensors            the latest weights (what `load_run` and `iabn-zoo evaluate RUN` use);
  resume.json                  the resume point: epoch, step, optimizer/scheduler/scaler state (tensors excepted);
  resume-epochNNNN.safetensors the tensors of that resume point: model, optimizer buffers, RNG states;
  metrics.jsonl                one JSON object per finished epoch;
  classes.csv                  index,name of every output (the `labels` of a registered entry, see `run_weights`).
Writing it is training's business (`iabn_zoo.train.run_writer`); building its network is the front door's.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, DataError
from ..system.hashing import file_md5
from ..system.tensor_files import read_safetensors
from .catalog import Weights

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
RESUME_FILE = "resume.json"
METRICS_FILE = "metrics.jsonl"
CLASSES_FILE = "classes.csv"


def classes_csv_bytes(classes: list[str]) -> bytes:
    """classes.csv's content (index,name): what a run writes, a Hub repository publishes and a registered entry of
    a run names as its labels."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["index", "name"])
    writer.writerows(enumerate(classes))
    return text.getvalue().encode()


def read_json(path: Path) -> Any:
    """The JSON document at `path`; CheckpointError naming the file when it is missing or damaged."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; is {path.parent} a fine-tuning run directory?") from None
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path} cannot be read ({error}); restore it or start a new run") from None


@dataclass(frozen=True)
class RunInfo:
    """What `config.json` says about a run: how to rebuild its network and feed it."""

    run_dir: Path
    arch: str
    arch_kwargs: dict[str, Any]
    bn_mode: str
    classes: tuple[str, ...]
    preprocessing: dict[str, Any]
    config: dict[str, Any]
    task: str = "classification"  # or "segmentation"; runs written before segmentation training have no field

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def is_run_dir(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a folder holding a run's config.json."""
    return Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file()


def read_run(run_dir: str | os.PathLike[str]) -> RunInfo:
    """The description of the run in `run_dir`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"run directory {run_dir} does not exist; pass the --out folder of `iabn-zoo finetune`")
    document = read_json(run_dir / CONFIG_FILE)
    try:
        return RunInfo(run_dir=run_dir, arch=document["arch"], arch_kwargs=dict(document["arch_kwargs"]),
                       bn_mode=document["bn_mode"], classes=tuple(document["classes"]),
                       preprocessing=dict(document["preprocessing"]), config=dict(document["config"]),
                       task=str(document.get("task", "classification")))
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"{run_dir / CONFIG_FILE} lacks field {error}; was it written by iabn-zoo finetune?")\
            from None


def run_state_dict(info: RunInfo) -> dict[str, torch.Tensor]:
    """The run's latest weights (model.safetensors)."""
    return read_safetensors(info.run_dir / MODEL_FILE)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records of metrics.jsonl (none when the file does not exist yet)."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_weights(run_dir: str | os.PathLike[str], *, name: str, url: str, description: str = "") -> Weights:
    """A `Weights` entry for the run's model.safetensors published at `url` (http/https), to pass to
    `register_weights` or write into a registry file; `create_model(name, pretrained=True)` then loads it."""
    info = read_run(run_dir)
    weights_file = info.run_dir / MODEL_FILE
    metrics = read_metrics(info.run_dir)
    keys = ("miou", "pixel_accuracy") if info.task == "segmentation" else ("top1", "top5")
    scores = {key: float(metrics[-1][f"val_{key}"]) for key in keys
              if metrics and metrics[-1].get(f"val_{key}") is not None}
    return Weights(
        name=name, arch=info.arch, arch_kwargs={**info.arch_kwargs, "bn_mode": info.bn_mode}, urls=(url,),
        md5=file_md5(weights_file), file_name=f"{name}.safetensors", num_classes=info.num_classes,
        task=info.task, metrics=scores, license="", preprocessing=dict(info.preprocessing),
        description=description or f"{info.config.get('model')} fine-tuned on {info.config.get('data_dir')}",
        labels=str((info.run_dir / CLASSES_FILE).resolve()), file_size=weights_file.stat().st_size)
