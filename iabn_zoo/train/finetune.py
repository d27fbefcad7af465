"""Fine-tuning a zoo network on a folder data set, in one process or many under `torchrun`.

`finetune("resnet50_ipabn_sync_lr_512", "data/", "runs/r1", epochs=5)` trains on data/train, validates on data/val
after every epoch and writes the run directory described in `iabn_zoo.weights.run_reader`. Under torchrun every
InPlace-ABN layer becomes synchronised (statistics over all ranks), samplers split the data, and rank 0 alone
writes files. The pieces: `config` (options), `processes` (ranks, devices), `loaders`, `model`, `optim`
(parameters, optimizer, schedule), `loop` (the epochs), `run_writer` (the files).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.nn as nn

from ..errors import DataError
from ..system.resources import out_of_memory_guard
from ..tasks.footprint import check_training_fits
from ..weights.run_reader import CONFIG_FILE, read_json
from .config import FinetuneConfig, resolve_config
from .classification_task import ClassificationTask
from .loop import Trainer
from .processes import process_group
from .segmentation_task import SegmentationTask
from .run_writer import has_resume_point, write_classes_csv, write_json


TASKS = {"classification": ClassificationTask, "segmentation": SegmentationTask}


@dataclass
class FinetuneResult:
    """The outcome: the run directory, one record per epoch, and the trained network (unwrapped)."""

    run_dir: Path
    metrics: list[dict[str, Any]]
    model: nn.Module = field(repr=False)

    @property
    def final(self) -> dict[str, Any]:
        return self.metrics[-1] if self.metrics else {}


def finetune(model: str, data_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, resume: bool = False,
             on_epoch_end: Callable[[dict[str, Any]], None] | None = None, **options: Any) -> FinetuneResult:
    """Fine-tune `model` (a weights or architecture name) on DATA/train, validating on DATA/val, into `out_dir`.

    `options` are the fields of FinetuneConfig (epochs, batch_size, lr, image_size, augment, ...). With
    `resume=True` an interrupted run continues exactly where its last resume point left off (there must be one).
    Options, device, memory and data are all checked before anything is written. `on_epoch_end(record)` is
    called on every rank after each epoch.
    """
    cfg = resolve_config(model, data_dir, out_dir, resume, options)
    with process_group(cfg.device) as procs:
        if cfg.task == "classification":
            check_training_fits(cfg.model, cfg.image_size, cfg.batch_size, procs.device)
        task = TASKS[cfg.task](cfg, procs)  # checks the data before anything is written
        check_resumed_classes(cfg, task.classes)
        description = task.describe()
        trainer = Trainer(cfg, procs, description, task)  # builds the network before anything is written
        if procs.is_writer:
            Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
            write_json(Path(cfg.out_dir) / CONFIG_FILE, description)
            write_classes_csv(Path(cfg.out_dir), task.classes)
        with out_of_memory_guard(f"training at {cfg.image_size} px with a batch of {cfg.batch_size}",
                                 ("image_size", "batch_size")):
            metrics = trainer.run(on_epoch_end)
        if procs.distributed:
            dist.barrier()
        return FinetuneResult(run_dir=Path(cfg.out_dir), metrics=metrics, model=trainer.model.eval())


def check_resumed_classes(cfg: FinetuneConfig, classes: list[str]) -> None:
    """A resumed run must see the classes it was trained on (its classifier has one output per class)."""
    run_dir = Path(cfg.out_dir)
    if not has_resume_point(run_dir):
        return
    trained = read_json(run_dir / CONFIG_FILE)["classes"]
    if trained != classes:
        raise DataError(f"cannot resume {run_dir} on {cfg.data_dir}: its classes ({', '.join(classes)}) differ from "
                        f"the run's ({', '.join(trained)}); resume with the data the run was trained on, or start "
                        "another run (another {out_dir})", parameters=("out_dir",))
