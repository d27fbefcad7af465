"""The logs people look at during fine-tuning, written by rank 0 after every saved epoch (none before the first):
TensorBoard scalars in RUN/tensorboard/ (the task's: loss, top-1 and top-5, or mIoU, pixel accuracy and per-class
IoU; learning rate, images/s per epoch; `tensorboard --logdir RUN/tensorboard`), the task's validation pictures
there too, and RUN/curves.png (loss, and the task's score, per epoch, train and val).

tensorboard and matplotlib are the `logs` extra (`pip install 'iabn-zoo[logs]'`, which `make setup` installs):
without one of them, its log is skipped and the run says so once; training itself never depends on them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy
from PIL import Image

from ..system.files import atomic_path
from ..system.storage import storage_guard

TENSORBOARD_DIR = "tensorboard"
CURVES_FILE = "curves.png"


class RunLogs:
    """TensorBoard and curves.png of one run of `task` (its `scalars`: TensorBoard tag -> metrics.jsonl key, a list
    value giving one scalar per item, "TAG/NN"; its `score_curve`); `first_epoch` is where a resumed run continues
    (later events of an earlier attempt are purged, so the curves never hold two versions of an epoch). The event
    file is opened with the first epoch logged, which is saved by then."""

    def __init__(self, run_dir: Path, task: Any, *, first_epoch: int = 0):
        self.run_dir = run_dir
        self.scalars, self.score_curve = task.scalars, task.score_curve
        self.first_epoch = first_epoch
        self.writer_class = summary_writer_class()
        self.writer = None
        self.figure = figure_class()
        skipped = ([f"{run_dir / TENSORBOARD_DIR} (no tensorboard)"] if self.writer_class is None else []) + \
                  ([f"{run_dir / CURVES_FILE} (no matplotlib)"] if self.figure is None else [])
        if skipped:
            warnings.warn(f"training logs skipped: {' and '.join(skipped)}; pip install 'iabn-zoo[logs]' to have "
                          "them", stacklevel=2)

    def epoch_end(self, metrics: list[dict[str, Any]], pictures: Sequence[Image.Image] = ()) -> None:
        """Log the last epoch of `metrics` (and its validation `pictures`) to TensorBoard and redraw curves.png from
        all of them (the epoch is saved by then: a full disk here stops the run with a StorageError that says so)."""
        record = metrics[-1]
        with storage_guard(self.run_dir, context=f"epoch {record['epoch']} was saved (`--resume` continues after "
                                                 "it); its TensorBoard point or curves.png were not"):
            self.log(metrics, pictures)

    def log(self, metrics: list[dict[str, Any]], pictures: Sequence[Image.Image]) -> None:
        """The writes of `epoch_end`: the last record's scalars and pictures, then the curves of all."""
        record = metrics[-1]
        if self.writer is None and self.writer_class is not None:
            self.writer = self.writer_class(log_dir=str(self.run_dir / TENSORBOARD_DIR),
                                            purge_step=self.first_epoch + 1)
        if self.writer is not None:
            for tag, key in self.scalars.items():
                for name, value in scalar_values(tag, record.get(key)):
                    self.writer.add_scalar(name, value, record["epoch"])
            for index, picture in enumerate(pictures):
                self.writer.add_image(f"validation/{index}", numpy.asarray(picture.convert("RGB")), record["epoch"],
                                      dataformats="HWC")
            self.writer.flush()
        if self.figure is not None:
            write_curves(self.run_dir / CURVES_FILE, metrics, self.figure, self.score_curve)

    def close(self) -> None:
        """Flush and close the TensorBoard event file."""
        if self.writer is not None:
            self.writer.close()


def scalar_values(tag: str, value: Any) -> list[tuple[str, float]]:
    """The TensorBoard scalars of one metric: itself, or one per item of a list ("TAG/NN"); None values skipped."""
    if isinstance(value, list):
        return [(f"{tag}/{index:02d}", item) for index, item in enumerate(value) if item is not None]
    return [] if value is None else [(tag, value)]


def summary_writer_class():
    """TensorBoard's SummaryWriter, None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


def figure_class():
    """matplotlib's Figure (drawn without pyplot, so no GUI backend or global state), None when not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def write_curves(path: Path, metrics: list[dict[str, Any]], figure_type,
                 score: tuple[str, tuple[str, ...]]) -> None:
    """Loss and the task's `score` ((title, keys): top-1, or mIoU) per epoch, train and val, as one PNG written
    atomically."""
    figure = figure_type(figsize=(10, 4), dpi=100, layout="constrained")
    epochs = [record["epoch"] for record in metrics]
    for axes, (title, keys) in zip(figure.subplots(1, 2), (("loss", ("train_loss", "val_loss")), score)):
        for key in keys:
            values = [record.get(key) for record in metrics]
            if any(value is not None for value in values):
                axes.plot(epochs, [float("nan") if v is None else v for v in values], marker="o",
                          label=key.split("_")[0])
        axes.set_title(title)
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        axes.legend()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
