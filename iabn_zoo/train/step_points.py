"""Resume points inside an epoch (`--save-every`, and on SIGTERM): written by rank 0 through the same commit point as
an epoch (`run_writer`), read by every rank.

Such a point is a tensor file `resume-epochNNNN-stepSSSSSSSS-wW.safetensors` (the epoch in progress, the optimizer
steps done, the world size) and resume.json in format 2, which adds to an epoch's resume.json:
`within_epoch` = {`batches_done` of this epoch's sample order, `steps_per_epoch`, `world_size`, `elapsed_s` of
training in the epoch so far}, the per-rank generators and tallies (`ranks`, `rank_states`), and `epoch_point`: the
resume.json document of the last epoch's point, whose tensor file stays. The new tensor file is written and fsynced
beside the others, then resume.json is replaced (the commit point), then the previous in-epoch tensor file goes: at
rest the folder holds at most two points, and a write killed at any moment leaves the previous point valid.

A point inside an epoch fixes the position in that epoch's sample order, which depends on the number of processes:
a job of another size continues from `epoch_point` instead (the steps since are trained again), with a warning.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from ..errors import InvalidArgumentError, StorageError
from ..system.files import fsync_directory, write_atomic, write_temporary
from ..system.storage import check_output_folder, safetensors_bytes, storage_guard
from ..weights.run_reader import CLASSES_FILE, CONFIG_FILE, RESUME_FILE, classes_csv_bytes, read_json
from .run_writer import (
    ResumePoint,
    has_resume_point,
    json_bytes,
    kept_point_words,
    make_folders,
    point_tensors,
    remove_unnamed_tensor_files,
    resume_document,
    resume_point_from,
)


def step_tensor_name(point: ResumePoint) -> str:
    """The tensor file of a point inside epoch `point.epoch + 1`."""
    return f"resume-epoch{point.epoch + 1:04d}-step{point.step:08d}-w{point.position['world_size']}.safetensors"


def epoch_point_document(run_dir: Path) -> dict[str, Any] | None:
    """resume.json's document of the run's last epoch point (kept beside points inside the next epoch)."""
    if not has_resume_point(run_dir):
        return None
    meta = read_json(run_dir / RESUME_FILE)
    return meta if meta.get("within_epoch") is None else meta.get("epoch_point")


def save_step_point(run_dir: Path, point: ResumePoint, *, description: dict[str, Any]) -> None:
    """Commit `point` (its `position` set) as the run's resume point, replacing the previous one inside the epoch;
    StorageError (nothing written, the previous point kept) when the disk refuses it. The run's description
    (config.json, classes.csv) goes with it, so that a point inside the first epoch is a run that can be resumed;
    the run folder is made by the run's first point and removed again if that point fails."""
    tensor_name = step_tensor_name(point)
    tensors, optimizer_rest = point_tensors(point)
    epoch_point = epoch_point_document(run_dir)
    document = json_bytes({**resume_document(point, tensor_name, optimizer_rest), "epoch_point": epoch_point})
    run_files = {CONFIG_FILE: json_bytes(description), CLASSES_FILE: classes_csv_bytes(description["classes"])}
    needed = safetensors_bytes(tensors) + len(document) + sum(map(len, run_files.values()))
    first = not has_resume_point(run_dir)
    context = f"the resume point at step {point.step} was not written; {kept_point_words(run_dir)}"
    advice = "move the run folder to a disk with room"
    check_output_folder(run_dir, needed=needed, context=context, advice=advice)
    staged, made = None, []
    try:
        with storage_guard(run_dir, needed=needed, context=context, advice=advice):
            made = make_folders(run_dir)
            staged = write_temporary(run_dir / tensor_name, lambda path: save_file(
                tensors, str(path), metadata={"epoch": str(point.epoch + 1), "step": str(point.step)}))
            os.replace(staged, run_dir / tensor_name)
            staged = None
            for name, data in run_files.items():
                write_atomic(run_dir / name, data)
            write_atomic(run_dir / RESUME_FILE, document)  # the commit point
            fsync_directory(run_dir)
    except BaseException:
        if staged is not None:
            staged.unlink(missing_ok=True)
        if not _named(run_dir, tensor_name):  # renamed into place, never committed
            (run_dir / tensor_name).unlink(missing_ok=True)
            if first:  # nothing of a run exists before its first point
                for name in run_files:
                    (run_dir / name).unlink(missing_ok=True)
                for folder in reversed(made):
                    folder.rmdir()
        raise
    keep = {tensor_name} | ({epoch_point["tensor_file"]} if epoch_point is not None else set())
    remove_unnamed_tensor_files(run_dir, keep=keep)


def _named(run_dir: Path, tensor_name: str) -> bool:
    """Whether the committed resume.json names `tensor_name`."""
    return has_resume_point(run_dir) and read_json(run_dir / RESUME_FILE)["tensor_file"] == tensor_name


def try_save_step_point(run_dir: Path, point: ResumePoint, *, description: dict[str, Any]) -> bool:
    """`save_step_point` for a periodic point: a disk that refuses it is a warning (training goes on, the previous
    point stays the resume point); True when written."""
    try:
        save_step_point(run_dir, point, description=description)
    except StorageError as error:
        warnings.warn(f"{error}; training goes on", stacklevel=2)
        return False
    return True


def load_for_job(run_dir: Path, world_size: int) -> ResumePoint:
    """The resume point a job of `world_size` processes continues from: the committed one, or, when that point lies
    inside an epoch written by a job of another size, the epoch point before it (with a warning)."""
    meta = read_json(run_dir / RESUME_FILE)
    position = meta.get("within_epoch")
    if position is None or position["world_size"] == world_size:
        return resume_point_from(run_dir, meta)
    where = f"step {meta['step']} inside epoch {meta['epoch'] + 1}"
    if meta.get("epoch_point") is None:
        raise InvalidArgumentError(
            f"the resume point of {run_dir} ({where}) was written by a job of {position['world_size']} process(es) "
            f"and this job has {world_size}: the position in the epoch's sample order depends on it and the run has "
            f"no finished epoch to fall back to; continue it with {position['world_size']} process(es)")
    warnings.warn(f"the resume point of {run_dir} ({where}) was written by {position['world_size']} process(es), "
                  f"this job has {world_size}: continuing from the end of epoch {meta['epoch']} instead (the "
                  f"{meta['step'] - meta['epoch_point']['step']} steps since are trained again)", stacklevel=2)
    return resume_point_from(run_dir, meta["epoch_point"])
