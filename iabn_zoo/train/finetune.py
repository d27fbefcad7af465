"""Fine-tuning a zoo network on a folder data set, in one process or many under `torchrun`.

`finetune("resnet50_ipabn_sync_lr_512", "data/", "runs/r1", epochs=5)` trains on data/train, validates on data/val
after every epoch and writes the run directory described in `iabn_zoo.weights.run_reader`. Under torchrun every
InPlace-ABN layer becomes synchronised (statistics over all ranks), samplers split the data, and rank 0 alone
writes files. The pieces: `config` (options), `task` (the contract every task module fulfils), `processes`
(ranks, devices), `model` (the network and config.json, the one skeleton of every task), `fitting` (the memory
check, `auto` sizes), `optim` (parameters, optimizer, schedule), `loop` (the epochs), `run_writer` (the files).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.nn as nn

from ..errors import DataError
from ..system.progress import write_line
from ..system.resources import out_of_memory_guard
from ..system.storage import check_output_folder
from ..weights.run_reader import CONFIG_FILE, RESUME_FILE, read_json
from .config import AUTO, FinetuneConfig, resolve_config
from .fitting import fit_run
from .loop import Trainer
from .elastic import check_same_run_everywhere, resume_wanted
from .model import describe_run, network_spec
from .processes import process_group
from .run_writer import epoch_bytes, has_resume_point
from .task import task_class


@dataclass
class FinetuneResult:
    """The outcome: the run directory, one record per epoch, the trained network (unwrapped), and the run's
    configuration (sizes chosen by `auto` included)."""

    run_dir: Path
    metrics: list[dict[str, Any]]
    model: nn.Module = field(repr=False)
    config: FinetuneConfig | None = field(default=None, repr=False)

    @property
    def final(self) -> dict[str, Any]:
        return self.metrics[-1] if self.metrics else {}


def finetune(model: str, data_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
             resume: bool | str | None = None, on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
             **options: Any) -> FinetuneResult:
    """Fine-tune `model` (a weights or architecture name) on DATA/train, validating on DATA/val, into `out_dir`.

    `options` are the fields of FinetuneConfig (epochs, batch_size, lr, image_size, augment, save_every, ...);
    `batch_size="auto"` (or for segmentation `image_size="auto"`) takes the largest that fits `memory_budget`
    (train.fitting). With `resume=True` an interrupted run continues exactly where its last resume point left off
    (there must be one); `resume="auto"` continues one if `out_dir` has a resume point and starts one otherwise; the
    default (None) is "auto" in a job torchrun may restart (`--max-restarts N >= 1`), else False (`train.elastic`).
    SIGTERM writes a resume point at the next step boundary and raises RunPreempted.
    Options, device, data, memory and the output folder (writable, room for two epochs' files) are all checked
    before anything is written; the run's files (config.json, classes.csv, logs) appear with its first saved epoch.
    `on_epoch_end(record)` is called on every rank after each epoch.
    """
    cfg = resolve_config(model, data_dir, out_dir, resume_wanted(resume, Path(out_dir)), options)
    run_dir = Path(cfg.out_dir)
    resuming = has_resume_point(run_dir)
    check_output_folder(run_dir, advice=ADVICE)
    with process_group(cfg.device) as procs:
        check_same_run_everywhere(run_dir, procs)
        task = task_class(cfg.task)(cfg, procs)  # opens and checks the data before anything is written
        check_resumed_classes(cfg, task.classes)
        spec = network_spec(cfg, task)
        with out_of_memory_guard("measuring training steps to choose a size that fits", ("memory_budget",)):
            fit_run(cfg, task, spec, procs)  # the memory of a step at the run's sizes, or the `auto` size chosen
        if procs.is_writer and resuming:
            say_what_auto_reuses(cfg, options)
        task.start()
        if procs.is_writer:
            say_what_the_resume_does(cfg, task.train_loader.batch_size or cfg.batch_size)
        description = describe_run(cfg, task, spec)
        trainer = Trainer(cfg, procs, description, task)  # builds the network before anything is written
        if procs.is_writer:
            epochs_in_flight = 1 if resuming else 2  # the new epoch is written beside the previous one
            check_output_folder(run_dir, needed=epochs_in_flight * epoch_bytes(trainer.model, cfg.optimizer),
                                advice=ADVICE, context="nothing was trained or written")
        size = cfg.image_size if isinstance(cfg.image_size, int) else "x".join(map(str, cfg.image_size))
        with out_of_memory_guard(f"training at {size} px with a batch of {cfg.batch_size}",
                                 ("image_size", "batch_size")):
            metrics = trainer.run(on_epoch_end)
        if procs.distributed:
            dist.barrier()
        return FinetuneResult(run_dir=Path(cfg.out_dir), metrics=metrics, model=trainer.model.eval(), config=cfg)


ADVICE = "choose another run folder"


def say_what_the_resume_does(cfg: FinetuneConfig, batch: int) -> None:
    """Warnings a user needs before the run starts: a finished run has nothing to train, a resume on another
    data folder (with the same classes) trains on it, a batch larger than the training set."""
    run_dir = Path(cfg.out_dir)
    if batch < cfg.batch_size:
        warnings.warn(f"the batch size {cfg.batch_size} is larger than the {batch} training images each process sees: "
                      f"every epoch is one optimizer step on a batch of {batch}; lower the batch size for more steps",
                      stacklevel=3)
    if not has_resume_point(run_dir):
        return
    done = read_json(run_dir / RESUME_FILE)["epoch"]
    if done >= cfg.epochs:
        warnings.warn(f"{run_dir} is finished: it trained all {done} of its {cfg.epochs} epochs, nothing is left to "
                      f"train; pass --resume --epochs N with N > {done} to train longer", stacklevel=3)
    trained_on = read_json(run_dir / CONFIG_FILE)["config"]["data_dir"]
    if os.path.realpath(trained_on) != os.path.realpath(cfg.data_dir):
        warnings.warn(f"resuming {run_dir} on {cfg.data_dir}, not on {trained_on} where its first {done} epoch(s) "
                      "were trained (the classes are the same): training continues on the new data", stacklevel=3)


def say_what_auto_reuses(cfg: FinetuneConfig, options: dict[str, Any]) -> None:
    """On resume, `auto` means the size the run chose and recorded: say which."""
    for option in ("batch_size", "image_size"):
        if options.get(option) == AUTO and getattr(cfg, option) != AUTO:
            write_line(f"iabn-zoo: {option.replace('_', ' ')} {getattr(cfg, option)}, as chosen when {cfg.out_dir} "
                       "started (recorded in its config.json)")


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
