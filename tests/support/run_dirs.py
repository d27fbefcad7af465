"""Run directories written by hand, in the layout `train/run_writer.py` writes (config.json + model.safetensors),
for tests of runs as models that need no training."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from iabn_zoo.system.tensor_files import write_safetensors
from iabn_zoo.train.run_writer import write_json
from iabn_zoo.weights.run_reader import CONFIG_FILE, MODEL_FILE

PREPROCESSING = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "resize": 40, "crop": 32,
                 "interpolation": "bilinear"}


def write_run_dir(run_dir: Path, model: nn.Module, *, arch: str, classes: list[str], bn_mode: str = "inplace",
                  arch_kwargs: dict | None = None, task: str | None = None) -> Path:
    """RUN/config.json describing `model` (built as `arch` with `arch_kwargs`) and RUN/model.safetensors with its
    tensors; `task=None` writes no "task" field, as runs from before segmentation training."""
    run_dir.mkdir(parents=True, exist_ok=True)
    document = {"config": {"model": arch, "data_dir": "nowhere"}, "classes": list(classes), "arch": arch,
                "arch_kwargs": dict(arch_kwargs or {}), "bn_mode": bn_mode, "source_weights": None,
                "preprocessing": dict(PREPROCESSING)}
    if task is not None:
        document["task"] = task
    write_json(run_dir / CONFIG_FILE, document)
    write_safetensors(run_dir / MODEL_FILE, model.state_dict(), {"format": "iabn-zoo fine-tuning run"})
    return run_dir
