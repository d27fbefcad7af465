"""Every option of a fine-tuning run, checked up front, and the configuration a resumed run continues with."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..data.folders import ON_ERROR
from ..errors import InvalidArgumentError, bad_argument
from ..factory import resolve_weights
from ..layers import BN_MODES
from ..system.resources import parse_bytes
from ..weights.run_reader import CONFIG_FILE, read_json
from .run_writer import has_resume_point
from .step_boundary import DEFAULT_SAVE_EVERY, parse_save_every
from .task import refuse_other_tasks_options, resolve_task

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "linear", "step", "poly")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
MIN_IMAGE_SIZE = 8
RESUMABLE_CHANGES = frozenset({"epochs", "num_workers", "progress", "device", "on_error", "save_every",
                               "memory_budget"})
AUTO = "auto"  # a batch size or crop chosen as the largest that fits (train.fitting), then recorded as an integer


@dataclass
class FinetuneConfig:
    """Every option of a fine-tuning run; stored in RUN/config.json. `batch_size` is per process."""

    model: str
    data_dir: str
    out_dir: str
    epochs: int = 10
    batch_size: int | str = 32  # or "auto": the largest that fits memory_budget, recorded as the integer chosen
    lr: float = 0.01
    image_size: int | list[int] | str | None = None  # None: the task's default; (H, W); "auto" for segmentation
    augment: str | None = None  # None: imagenet (classification), standard (segmentation)
    pretrained: bool | None = None  # None: True for a weights name, False for a bare architecture
    bn_mode: str | None = None  # None: the weights' mode (sync becomes inplace on one process), else inplace
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    classifier_lr_mult: float = 1.0
    schedule: str | None = None  # None: cosine (classification), poly (segmentation)
    step_epochs: int | None = None  # step schedule: decay every this many epochs (default epochs // 3)
    gamma: float = 0.1
    freeze_stages: int = 0
    clip_grad_norm: float = 0.0  # 0: no clipping
    precision: str = "auto"  # auto: fp16/bf16 autocast on CUDA, fp32 on CPU
    sync_bn: bool = True  # under torchrun, make InPlace-ABN layers synchronised
    seed: int = 0
    num_workers: int = 2
    on_error: str = "skip"  # unreadable images: skip with a warning, or raise
    device: str | None = None  # None or "auto": CUDA when available
    progress: bool | None = True  # bars at a terminal (system.progress); False: never (None, of older runs: True)
    # the task and the options of segmentation (train.task_options checks them)
    task: str | None = None  # None: from the model (segmentation network or weights, else classification)
    output_stride: int | None = None  # 8 or 16; None: the architecture's default
    backbone_weights: str | None = None  # deeplabv3_<backbone>: weights name, RUN, "none"; None: the default
    loss: str = "ce"  # ce or ohem
    ohem_threshold: float = 0.7
    ohem_min_kept: int = 100_000
    class_weights: list[float] | None = None  # one loss weight per class
    ignore_index: int = 255
    num_classes: int | None = None  # None: from the data (classes.csv, layout)
    scale_range: list[float] | tuple[float, float] = (0.5, 2.0)
    grad_checkpointing: bool = False
    save_every: int | str | None = DEFAULT_SAVE_EVERY  # resume points inside an epoch: steps, "Nmin", 0 (off)
    memory_budget: str | int | None = None  # what a process may use (16GiB, bytes); None: the device's free memory

    def __post_init__(self) -> None:
        check_config(self)


def _check(condition: bool, parameter: str, problem: str) -> None:
    if not condition:
        raise bad_argument(parameter, problem)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_config(cfg: FinetuneConfig) -> None:
    """Refuse out-of-range options with a message naming the option and what it accepts."""
    task = resolve_task(cfg)
    _check(_is_int(cfg.epochs) and cfg.epochs >= 1, "epochs", f"must be an integer >= 1, got {cfg.epochs!r}")
    _check((_is_int(cfg.batch_size) and cfg.batch_size >= 2) or cfg.batch_size == AUTO, "batch_size",
           f"must be an integer >= 2 (batch statistics need two images) or auto, got {cfg.batch_size!r}")
    _check(_is_number(cfg.lr) and cfg.lr > 0, "lr", f"must be a positive number, got {cfg.lr!r}")
    refuse_other_tasks_options(cfg, task)
    task.check_options(cfg, MIN_IMAGE_SIZE)
    if cfg.batch_size == AUTO and cfg.image_size == AUTO:
        raise InvalidArgumentError("{image_size} and {batch_size} cannot both be auto: give one, and the other is "
                                   "chosen to fit", parameters=("image_size", "batch_size"))
    if cfg.memory_budget is not None:
        parse_bytes(str(cfg.memory_budget), "memory_budget")
    for name, choices in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("precision", PRECISIONS),
                          ("on_error", ON_ERROR)):
        value = getattr(cfg, name)
        _check(value in choices, name, f"must be one of {', '.join(choices)}, got {value!r}")
    _check(cfg.bn_mode is None or cfg.bn_mode in BN_MODES, "bn_mode",
           f"must be one of {', '.join(BN_MODES)}, got {cfg.bn_mode!r}")
    _check(_is_number(cfg.weight_decay) and cfg.weight_decay >= 0, "weight_decay",
           f"must be >= 0, got {cfg.weight_decay!r}")
    _check(_is_number(cfg.classifier_lr_mult) and cfg.classifier_lr_mult > 0, "classifier_lr_mult",
           f"must be > 0, got {cfg.classifier_lr_mult!r}")
    _check(_is_number(cfg.momentum) and 0 <= cfg.momentum < 1, "momentum", f"must be in [0, 1), got {cfg.momentum!r}")
    _check(_is_number(cfg.gamma) and 0 < cfg.gamma <= 1, "gamma", f"must be in (0, 1], got {cfg.gamma!r}")
    _check(cfg.step_epochs is None or (_is_int(cfg.step_epochs) and cfg.step_epochs >= 1), "step_epochs",
           f"must be an integer >= 1, got {cfg.step_epochs!r}")
    _check(_is_int(cfg.freeze_stages) and cfg.freeze_stages >= 0, "freeze_stages",
           f"must be an integer >= 0, got {cfg.freeze_stages!r}")
    _check(_is_number(cfg.clip_grad_norm) and cfg.clip_grad_norm >= 0, "clip_grad_norm",
           f"must be >= 0 (0: off), got {cfg.clip_grad_norm!r}")
    _check(_is_int(cfg.num_workers) and cfg.num_workers >= 0, "num_workers",
           f"must be an integer >= 0, got {cfg.num_workers!r}")
    _check(isinstance(cfg.grad_checkpointing, bool), "grad_checkpointing",
           f"must be true or false, got {cfg.grad_checkpointing!r}")
    parse_save_every(cfg.save_every)


def resolve_config(model: str, data_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], resume: bool,
                   options: dict[str, Any]) -> FinetuneConfig:
    """The run's configuration: the given options, or on resume the stored ones (checked to agree)."""
    known = {f.name for f in fields(FinetuneConfig)} - {"model", "data_dir", "out_dir"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InvalidArgumentError(f"unknown fine-tuning option(s): {', '.join(unknown)}; known: "
                                   f"{', '.join(sorted(known))}")
    run_dir = Path(out_dir)
    resolve_weights(model)  # an unknown name fails here, before anything is read or written
    requested = FinetuneConfig(model=model, data_dir=str(data_dir), out_dir=str(run_dir), **options)
    if not has_resume_point(run_dir):
        if resume:
            raise nothing_to_resume(run_dir)
        return requested  # nothing finished yet: (re)start from the beginning
    if not resume:
        raise InvalidArgumentError(f"{run_dir} already holds a run with a resume point; pass {{resume}} to continue "
                                   "it, or choose another {out_dir}", parameters=("resume", "out_dir"))
    stored = read_json(run_dir / CONFIG_FILE)["config"]
    stored.update({"data_dir": str(data_dir), "out_dir": str(run_dir)})
    changed = sorted(k for k, v in options.items() if k not in RESUMABLE_CHANGES and stored.get(k) != as_json(v)
                     and v != AUTO)  # a size chosen to fit: the run's recorded choice is reused
    changed += ["model"] if stored["model"] != model else []
    if changed:
        listing = ", ".join(f"{{{k}}} (run: {stored.get(k)!r})" for k in changed)
        raise InvalidArgumentError(f"cannot resume {run_dir} with different option(s): {listing}; drop them or start "
                                   "another run", parameters=changed)
    stored.update({k: v for k, v in options.items() if k in RESUMABLE_CHANGES})
    return FinetuneConfig(**stored)


def as_json(value: Any) -> Any:
    """`value` as config.json gives it back (tuples become lists), to compare an option with the stored one."""
    return json.loads(json.dumps(value))


def nothing_to_resume(run_dir: Path) -> InvalidArgumentError:
    """The error of a resume with no resume point: the folder is missing, or the run never finished an epoch."""
    if not run_dir.exists():
        where = f"{run_dir} does not exist"
    elif not (run_dir / CONFIG_FILE).exists():
        where = f"{run_dir} is not a fine-tuning run (no {CONFIG_FILE})"
    else:
        where = (f"{run_dir} holds no resume point yet (it stopped before its first epoch was saved: interrupted, "
                 "or a disk error it reported then)")
    return InvalidArgumentError(f"nothing to resume: {where}; drop {{resume}} to start a new run, or give the "
                                "{out_dir} of the run to continue", parameters=("resume", "out_dir"))
