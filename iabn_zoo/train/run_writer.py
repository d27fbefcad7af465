"""Writing a fine-tuning run directory (the layout is described in `iabn_zoo.weights.run_reader`): weights, the
resume point, metrics and class names, every file atomically.

An epoch is saved as one unit (`save_epoch`): every file of the epoch (its tensor file, model.safetensors,
metrics.jsonl, config.json, classes.csv, resume.json) is first written completely and fsynced beside the previous
epoch's files under temporary names; only then are they renamed into place, `resume.json` (which names the tensor
file and holds the metrics) first of the live names, so that it is the commit point. A write that fails (a full
disk) or is killed at any moment removes its partial files and leaves the previous epoch as the resume point,
complete. The run folder itself is made by the first epoch's save (nothing of a run exists before it), and removed
again if that save fails. Resume points inside an epoch (`step_points`) go through the same commit point; a
committed point removes the tensor files no longer named by resume.json, so that the run folder holds at most two
(an epoch's and one inside the next epoch).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..errors import CheckpointError
from ..system.files import fsync_directory, write_atomic, write_temporary
from ..system.storage import check_output_folder, safetensors_bytes, storage_guard
from ..system.tensor_files import read_safetensors, storable
from ..weights.run_reader import (
    CLASSES_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_FILE,
    RESUME_FILE,
    classes_csv_bytes,
    read_json,
    read_metrics,
)

FORMAT_VERSION = 1  # a resume point at the end of an epoch
STEP_FORMAT_VERSION = 2  # inside an epoch (`step_points`): older versions refuse it instead of restarting the epoch
OPTIMIZER_PREFIX = "optimizer."
TENSOR_FILE_PATTERN = re.compile(r"resume-epoch\d{4}(-step\d+-w\d+)?\.safetensors")


def write_json(path: Path, value: Any) -> None:
    """Write `value` as indented JSON, atomically."""
    write_atomic(path, json_bytes(value))


def json_bytes(value: Any) -> bytes:
    """`value` as indented JSON text."""
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def metrics_bytes(records: list[dict[str, Any]]) -> bytes:
    """metrics.jsonl's content: one JSON object per finished epoch."""
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()


def write_classes_csv(folder: Path, classes: list[str]) -> None:
    """FOLDER/classes.csv, written atomically."""
    write_atomic(folder / CLASSES_FILE, classes_csv_bytes(classes))


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
    metrics: list[dict[str, Any]] = field(default_factory=list)  # one record per finished epoch, up to `epoch`
    ranks: list[dict[str, Any]] = field(default_factory=list)  # each rank's JSON-ready state (`rank_states`)
    position: dict[str, Any] | None = None  # inside an epoch: where (`step_points`); None at an epoch's end


def resume_document(point: ResumePoint, tensor_name: str, optimizer_rest: dict[str, Any]) -> dict[str, Any]:
    """resume.json's content for `point`, whose tensors are in `tensor_name`."""
    document = {"format": FORMAT_VERSION if point.position is None else STEP_FORMAT_VERSION, "epoch": point.epoch,
                "step": point.step, "tensor_file": tensor_name, "optimizer": optimizer_rest,
                "scheduler": {"step": point.step}, "scaler": point.scaler, "metrics": point.metrics,
                "ranks": point.ranks}
    return document if point.position is None else {**document, "within_epoch": point.position}


def point_tensors(point: ResumePoint) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensor file's content of `point` (model, optimizer buffers, RNG states) and the optimizer's JSON rest."""
    optimizer_tensors, optimizer_rest = split_optimizer_state(point.optimizer)
    return storable({**prefixed(point.model, "model."), **optimizer_tensors, **prefixed(point.rng, "rng.")}), \
        optimizer_rest


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


def save_epoch(run_dir: Path, point: ResumePoint, *, description: dict[str, Any]) -> None:
    """Save a finished epoch as one unit (see the module's description): its tensor file, the weights, the metrics
    up to it, the run's description and the resume point; on any failure nothing of it stays and the previous
    epoch remains the resume point. A full disk or an unwritable folder raises StorageError saying what was kept."""
    previous = resume_tensor_file(run_dir)
    tensor_name = f"resume-epoch{point.epoch:04d}.safetensors"
    tensors, optimizer_rest = point_tensors(point)
    weights = {key[len("model."):]: value for key, value in tensors.items() if key.startswith("model.")}
    documents = {METRICS_FILE: metrics_bytes(point.metrics), CONFIG_FILE: json_bytes(description),
                 CLASSES_FILE: classes_csv_bytes(description["classes"]),
                 RESUME_FILE: json_bytes(resume_document(point, tensor_name, optimizer_rest))}
    needed = safetensors_bytes(tensors) + safetensors_bytes(weights) + sum(map(len, documents.values()))
    context = f"epoch {point.epoch} was not saved; {kept_point_words(run_dir)}"
    advice = "move the run folder to a disk with room"
    check_output_folder(run_dir, needed=needed, context=context, advice=advice)
    writers = {tensor_name: lambda path: save_file(tensors, str(path), metadata={"epoch": str(point.epoch)}),
               MODEL_FILE: lambda path: save_file(weights, str(path), metadata={
                   "epoch": str(point.epoch), "format": "iabn-zoo fine-tuning run"}),
               **{name: (lambda path, data=data: path.write_bytes(data)) for name, data in documents.items()}}
    staged: dict[str, Path] = {}
    committed = False
    made: list[Path] = []
    try:
        with storage_guard(run_dir, needed=needed, context=context, advice=advice):
            made = make_folders(run_dir)
            for name, write in writers.items():
                staged[name] = write_temporary(run_dir / name, write)
            # the switch-over: the tensor file under its name, resume.json (the commit point), then the rest
            for name in (tensor_name, RESUME_FILE, *documents, MODEL_FILE):
                if name in staged:
                    os.replace(staged.pop(name), run_dir / name)
                    committed = committed or name == RESUME_FILE
            fsync_directory(run_dir)
    finally:
        for temporary in staged.values():
            temporary.unlink(missing_ok=True)
        if not committed and (previous is None or previous.name != tensor_name):
            (run_dir / tensor_name).unlink(missing_ok=True)
        for folder in reversed(made if not committed else []):
            folder.rmdir()
    remove_unnamed_tensor_files(run_dir, keep={tensor_name})


def kept_point_words(run_dir: Path) -> str:
    """What a failed save leaves as the run's resume point, in words."""
    if not has_resume_point(run_dir):
        return "the run has no finished epoch yet"
    meta = read_json(run_dir / RESUME_FILE)
    where = (f"epoch {meta['epoch']}" if meta.get("within_epoch") is None else
             f"step {meta['step']} (inside epoch {meta['epoch'] + 1})")
    return f"the run keeps {where} as its resume point (`--resume` continues from it)"


def remove_unnamed_tensor_files(run_dir: Path, keep: set[str]) -> None:
    """Remove the resume tensor files of `run_dir` other than `keep` (those committed resume.json names): earlier
    points, and files a write killed between its renames left behind."""
    for path in run_dir.glob("resume-epoch*.safetensors"):
        if TENSOR_FILE_PATTERN.fullmatch(path.name) and path.name not in keep:
            path.unlink(missing_ok=True)


def make_folders(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; the ones created, outermost first."""
    missing = [path for path in (folder, *folder.parents) if not path.exists()][::-1]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def epoch_bytes(model: torch.nn.Module, optimizer: str) -> int:
    """About the bytes one saved epoch takes (weights twice, optimizer slots per trainable parameter), known
    before training: a run needs room for two while the new epoch is written beside the previous one."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    slots = 2 if optimizer == "adamw" else 1
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return 2 * weights + slots * trainable


def has_resume_point(run_dir: Path) -> bool:
    """Whether `run_dir` holds a committed resume point."""
    return (run_dir / RESUME_FILE).exists()


def resume_tensor_file(run_dir: Path) -> Path | None:
    """The tensor file the committed resume.json names, None when there is no resume point yet."""
    if not has_resume_point(run_dir):
        return None
    return run_dir / read_json(run_dir / RESUME_FILE)["tensor_file"]


def load_resume_point(run_dir: Path) -> ResumePoint:
    """The committed resume point of `run_dir` (at an epoch's end or inside an epoch)."""
    return resume_point_from(run_dir, read_json(run_dir / RESUME_FILE))


def resume_point_from(run_dir: Path, meta: dict[str, Any]) -> ResumePoint:
    """The resume point that the resume.json document `meta` describes, its tensors read from `run_dir`."""
    if meta.get("format") not in (FORMAT_VERSION, STEP_FORMAT_VERSION):
        raise CheckpointError(f"{run_dir / RESUME_FILE} has format {meta.get('format')!r}, this version reads "
                              f"{FORMAT_VERSION} and {STEP_FORMAT_VERSION}; resume with the iabn-zoo version that "
                              "wrote it")
    # copies, not views of the memory-mapped file: the optimizer keeps what it is given, and a mapped file goes on
    # taking disk space after the next epoch deletes it
    tensors = {key: value.clone() for key, value in read_safetensors(run_dir / meta["tensor_file"]).items()}
    metrics = meta.get("metrics")  # runs saved before the metrics moved into resume.json: metrics.jsonl's
    if metrics is None:
        metrics = [record for record in read_metrics(run_dir) if record["epoch"] <= meta["epoch"]]
    return ResumePoint(epoch=meta["epoch"], step=meta["step"], model=unprefixed(tensors, "model."),
                       optimizer=join_optimizer_state(tensors, meta["optimizer"]), scaler=meta["scaler"],
                       rng=unprefixed(tensors, "rng."), metrics=metrics, ranks=meta.get("ranks", []),
                       position=meta.get("within_epoch"))
