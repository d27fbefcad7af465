"""The logs people look at during fine-tuning, written by rank 0 after every epoch: TensorBoard scalars in
RUN/tensorboard/ (loss, top-1, top-5 or mIoU, pixel accuracy and per-class IoU, learning rate, images/s per epoch;
`tensorboard --logdir RUN/tensorboard`), a segmentation run's validation pictures there too, and RUN/curves.png
(loss and top-1 or mIoU per epoch, train and val).

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
# TensorBoard tag -> metrics.jsonl key
SCALARS = {"loss/train": "train_loss", "loss/val": "val_loss", "top1/train": "train_top1", "top1/val": "val_top1",
           "top5/val": "val_top5", "learning_rate": "lr", "images_per_second": "images_per_s",
           "miou/val": "val_miou", "pixel_accuracy/val": "val_pixel_accuracy"}
PER_CLASS_KEY = "val_per_class_iou"  # a list in class order: one scalar per class, "iou/val/NN"


class RunLogs:
    """TensorBoard and curves.png of one run; `first_epoch` is where a resumed run continues (later events of an
    earlier attempt are purged, so the curves never hold two versions of an epoch)."""

    def __init__(self, run_dir: Path, *, first_epoch: int = 0):
        self.run_dir = run_dir
        self.writer = tensorboard_writer(run_dir / TENSORBOARD_DIR, purge_step=first_epoch + 1)
        self.figure = figure_class()
        skipped = ([f"{run_dir / TENSORBOARD_DIR} (no tensorboard)"] if self.writer is None else []) + \
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
        if self.writer is not None:
            for tag, key in SCALARS.items():
                if record.get(key) is not None:
                    self.writer.add_scalar(tag, record[key], record["epoch"])
            for index, value in enumerate(record.get(PER_CLASS_KEY) or []):
                if value is not None:
                    self.writer.add_scalar(f"iou/val/{index:02d}", value, record["epoch"])
            for index, picture in enumerate(pictures):
                self.writer.add_image(f"validation/{index}", numpy.asarray(picture.convert("RGB")), record["epoch"],
                                      dataformats="HWC")
            self.writer.flush()
        if self.figure is not None:
            write_curves(self.run_dir / CURVES_FILE, metrics, self.figure)

    def close(self) -> None:
        """Flush and close the TensorBoard event file."""
        if self.writer is not None:
            self.writer.close()


def tensorboard_writer(log_dir: Path, *, purge_step: int):
    """A TensorBoard SummaryWriter on `log_dir`, None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def figure_class():
    """matplotlib's Figure (drawn without pyplot, so no GUI backend or global state), None when not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def write_curves(path: Path, metrics: list[dict[str, Any]], figure_type) -> None:
    """Loss and top-1 (classification) or mIoU (segmentation) per epoch, train and val, as one PNG written
    atomically."""
    figure = figure_type(figsize=(10, 4), dpi=100, layout="constrained")
    epochs = [record["epoch"] for record in metrics]
    score = ("mIoU (%)", ("val_miou",)) if "val_miou" in metrics[-1] else ("top-1 (%)", ("train_top1", "val_top1"))
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
