"""Writing a fine-tuning run directory (the layout is described in `iabn_zoo.weights.run_reader`): weights, the
resume point, metrics and class names, every file atomically.

`resume.json` is renamed into place last and names its tensor file, so a write killed at any moment leaves the
previous resume point loadable.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..system.files import write_atomic
from ..system.tensor_files import read_safetensors, write_safetensors
from ..weights.run_reader import CLASSES_FILE, METRICS_FILE, MODEL_FILE, RESUME_FILE, read_json

FORMAT_VERSION = 1
OPTIMIZER_PREFIX = "optimizer."


def write_json(path: Path, value: Any) -> None:
    """Write `value` as indented JSON, atomically."""
    write_atomic(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def save_weights(run_dir: Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """RUN/model.safetensors: the model's latest weights."""
    write_safetensors(run_dir / MODEL_FILE, state_dict, metadata)


def write_metrics(run_dir: Path, records: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl with `records` (a resumed run drops records past its resume point)."""
    write_atomic(run_dir / METRICS_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode())


def write_classes_csv(run_dir: Path, classes: list[str]) -> None:
    """RUN/classes.csv (index,name), the label file a registered entry of the run points to."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["index", "name"])
    writer.writerows(enumerate(classes))
    write_atomic(run_dir / CLASSES_FILE, text.getvalue().encode())


# -- the resume point: tensors go to a safetensors file, everything else to resume.json -------------------------

@dataclass
class ResumePoint:
    """What a resume needs: finished epochs, optimizer steps, and the state of every stateful piece."""

    epoch: int
    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scaler: dict[str, Any]
    rng: dict[str, torch.Tensor]


def split_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer.state_dict() as (tensors keyed 'optimizer.PARAM.NAME', JSON-ready rest)."""
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{OPTIMIZER_PREFIX}{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def join_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `split_optimizer_state`, ready for Optimizer.load_state_dict."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(OPTIMIZER_PREFIX):
            index, name = key[len(OPTIMIZER_PREFIX):].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    for index, values in rest["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": rest["param_groups"]}


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in tensors.items()}


def unprefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}


def save_resume_point(run_dir: Path, point: ResumePoint) -> None:
    """Write the tensor file of `point`, then commit it by replacing resume.json; drop the older tensor file."""
    previous = resume_tensor_file(run_dir)
    tensor_file = f"resume-epoch{point.epoch:04d}.safetensors"
    optimizer_tensors, optimizer_rest = split_optimizer_state(point.optimizer)
    tensors = {**prefixed(point.model, "model."), **optimizer_tensors, **prefixed(point.rng, "rng.")}
    write_safetensors(run_dir / tensor_file, tensors, {"epoch": str(point.epoch)})
    write_json(run_dir / RESUME_FILE, {
        "format": FORMAT_VERSION, "epoch": point.epoch, "step": point.step, "tensor_file": tensor_file,
        "optimizer": optimizer_rest, "scheduler": {"step": point.step}, "scaler": point.scaler,
    })
    if previous is not None and previous.name != tensor_file:
        previous.unlink(missing_ok=True)


def has_resume_point(run_dir: Path) -> bool:
    """Whether `run_dir` holds a committed resume point."""
    return (run_dir / RESUME_FILE).exists()


def resume_tensor_file(run_dir: Path) -> Path | None:
    """The tensor file the committed resume.json names, None when there is no resume point yet."""
    if not has_resume_point(run_dir):
        return None
    return run_dir / read_json(run_dir / RESUME_FILE)["tensor_file"]


def load_resume_point(run_dir: Path) -> ResumePoint:
    """The committed resume point of `run_dir`."""
    meta = read_json(run_dir / RESUME_FILE)
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{run_dir / RESUME_FILE} has format {meta.get('format')!r}, this version reads "
                              f"{FORMAT_VERSION}; resume with the iabn-zoo version that wrote it")
    tensors = read_safetensors(run_dir / meta["tensor_file"])
    return ResumePoint(epoch=meta["epoch"], step=meta["step"], model=unprefixed(tensors, "model."),
                       optimizer=join_optimizer_state(tensors, meta["optimizer"]), scaler=meta["scaler"],
                       rng=unprefixed(tensors, "rng."))
