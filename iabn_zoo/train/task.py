"""The task contract, in one place: what fine-tuning asks of a task (classification, segmentation), and which task a
run trains.

A task is a class in its own module (`classification_task`, `segmentation_task`), registered with `register_task`
and named in TASK_MODULES; a third task is one more module beside them. Nothing outside the task modules asks which
task a run is (no `if task == ...`): the loop, the run skeleton (`train.model`), the memory check
(`train.fitting`), the logs, the command line and the memory ledger (`train.memory`) ask the task object.

Which task a model trains is registry metadata: the `task` of its weights entry, or the task its architecture was
registered with (`models.arch_task`); `task=` may say it explicitly and must then agree.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from ..errors import bad_argument
from ..models import arch_task, is_arch
from ..weights.catalog import get_weights, is_weights
from ..weights.run_reader import is_run_dir, read_run

TASK_MODULES = ("classification_task", "segmentation_task")


class TrainMeter(Protocol):
    """The loss of the training batches of one epoch, and its tallies."""

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss to back-propagate for this batch (tallied)."""

    def postfix(self) -> dict[str, str]:
        """What the progress bar shows."""

    def images(self) -> int:
        """Images tallied so far on this rank."""

    def finish(self, procs: Any) -> tuple[dict[str, Any], int]:
        """(the epoch's training metrics summed over ranks, images)."""


class ValMeter(Protocol):
    """The scores of one validation pass."""

    def add(self, logits: torch.Tensor, targets: torch.Tensor, images: torch.Tensor) -> None:
        """Score one validation batch."""

    def finish(self, procs: Any) -> tuple[dict[str, Any], int]:
        """(the validation metrics summed over ranks, images)."""


class Task(Protocol):
    """What a task supplies. Class level: known from the model alone, before any data is read. Instance level:
    `Task(cfg, procs)` opens and checks the data (nothing is written); `start()` builds the loaders once the run's
    sizes are final (after `train.fitting` has checked or chosen them)."""

    name: ClassVar[str]  # the registry's task name of the model
    defaults: ClassVar[dict[str, Any]]  # options the task fills when the run leaves them out
    own_options: ClassVar[dict[str, Any]]  # options only this task takes, each with its "not given" value
    auto_sizes: ClassVar[tuple[str, ...]]  # the sizes `auto` may choose ("batch_size", "image_size")
    columns: ClassVar[tuple[str, ...]]  # metrics.jsonl keys of the line printed after each epoch
    summary: ClassVar[tuple[str, ...]]  # keys of the last record the command's summary shows
    scalars: ClassVar[dict[str, str]]  # TensorBoard tag -> metrics.jsonl key (a list value: one scalar per item)
    score_curve: ClassVar[tuple[str, tuple[str, ...]]]  # (title, keys) of the score panel of curves.png

    classes: list[str]
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader

    @staticmethod
    def check_options(cfg: Any, min_image_size: int) -> None:
        """The task's options in range (InvalidArgumentError naming the option otherwise)."""

    @staticmethod
    def ledger_loss(output: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """The task's training loss of `output` against random targets for `inputs`: what the memory ledger
        counts a step with (train.memory, train.budget)."""

    @staticmethod
    def batch_bytes(batch: int, crop: tuple[int, int]) -> int:
        """Bytes of one data loader batch (images and targets) at `batch` crops of (H, W)."""

    def batch_limit(self) -> int:
        """The most images one rank's batch can hold (its share of the training set): `auto` never goes past it."""

    def arch_options(self, arch: str, arch_kwargs: dict[str, Any]) -> dict[str, Any]:
        """Architecture arguments the task's options set (segmentation: the output stride)."""

    def start(self) -> None:
        """Build `train_loader` and `val_loader` at the run's final batch size and crop."""

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order and augmentation."""

    def preprocessing(self) -> dict[str, Any]:
        """config.json's `preprocessing`: how to feed the trained network (and, segmentation, test-time scales
        and flip)."""

    def run_facts(self) -> dict[str, Any]:
        """config.json fields only this task writes (segmentation: ignore_index, backbone_weights)."""

    def train_meter(self) -> TrainMeter: ...

    def val_meter(self) -> ValMeter: ...

    def epoch_pictures(self, meter: ValMeter) -> list[Any]:
        """The validation pictures rank 0 kept this epoch (none for classification)."""

    def log_pictures(self, pictures: list[Any]) -> list[Any]:
        """Pictures for TensorBoard."""

    def write_samples(self, run_dir: Path, pictures: list[Any]) -> None:
        """RUN/samples/ after the last epoch (nothing for classification)."""


_TASKS: dict[str, type] = {}


def register_task(cls: type) -> type:
    """Class decorator: make `cls` the task named `cls.name`."""
    _TASKS[cls.name] = cls
    return cls


def task_class(name: str) -> type:
    """The task class registered as `name`."""
    for module in TASK_MODULES:
        importlib.import_module(f"{__package__}.{module}")
    if name not in _TASKS:
        raise bad_argument("task", f"must be one of {', '.join(sorted(_TASKS))}, got {name!r}")
    return _TASKS[name]


def task_classes() -> list[type]:
    """Every registered task class."""
    task_class(next(iter(_TASKS), "classification"))
    return list(_TASKS.values())


def model_task(model: str) -> str | None:
    """The task `model` (a weights or architecture name, or a RUN directory) trains, from the registries (a run: its
    config.json); None for an unknown name."""
    if is_weights(model):
        return get_weights(model).task
    if is_arch(model):
        return arch_task(model)
    return read_run(model).task if is_run_dir(model) else None


def task_for(model: str, task: str | None = None) -> type:
    """The task class of a run of `model`; an explicit `task` must be a task and agree with the model's."""
    inferred = model_task(model)
    if task is not None:
        chosen = task_class(task)
        if inferred is not None and task != inferred:
            raise bad_argument("task", f"is {task} but {model} is a {inferred} network; drop {{task}} or choose a "
                                       f"{task} model")
        return chosen
    return task_class(inferred or "classification")


def resolve_task(cfg: Any) -> type:
    """Fill `cfg.task` from the model (or check the explicit one), then the task's defaults; the task class."""
    kind = task_for(cfg.model, cfg.task)
    cfg.task = kind.name
    for option, value in kind.defaults.items():
        if getattr(cfg, option) is None:
            setattr(cfg, option, value)
    return kind


def refuse_other_tasks_options(cfg: Any, kind: type) -> None:
    """Options that only another task takes, given to a run of `kind`, are refused naming the first."""
    for other in task_classes():
        for option, unset in other.own_options.items():
            if option not in kind.own_options and _normal(getattr(cfg, option)) != _normal(unset):
                raise bad_argument(option, f"is a {other.name} option but {cfg.model} is a {kind.name} network; "
                                           f"drop it, or fine-tune a {other.name} model")


def _normal(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def random_targets(classes: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Random class indices of `shape` (on the meta device: shapes only), for the ledger's loss."""
    return torch.randint(0, max(classes, 1), shape, device=device)


LedgerLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ledger_loss_of(model: str) -> LedgerLoss:
    """The ledger loss of the task `model` trains (classification for names the registries do not know)."""
    return task_class(model_task(model) or "classification").ledger_loss
