"""The task contract (train/task.py): every task module supplies all of it, the modules every task shares ask no
task which it is, and a model's task is registry metadata (no network is built to learn it)."""

import inspect
import re
from pathlib import Path
from typing import get_type_hints

import pytest

from iabn_zoo.models import register_arch, unregister_arch
from iabn_zoo.train.config import FinetuneConfig
from iabn_zoo.train.task import Task, ledger_loss_of, model_task, task_class, task_classes

PACKAGE = Path(__file__).resolve().parents[2] / "iabn_zoo"
SHARED = ["train/finetune.py", "train/loop.py", "train/logs.py", "train/model.py", "train/fitting.py",
          "train/auto_sizes.py", "train/memory.py", "train/budget.py", "train/config.py", "cli/train.py"]
ASKING = re.compile(r"task\s*[!=]=|\"(?:val_miou|val_top1|segmentation|classification)\"|\bis_segmentation\(")


def contract_members() -> set[str]:
    """What the Protocol names: its attributes (class and instance) and its methods."""
    methods = {name for name, value in vars(Task).items() if not name.startswith("_")
               and (inspect.isfunction(value) or isinstance(value, staticmethod))}
    return methods | set(get_type_hints(Task))


@pytest.mark.parametrize("name", ["classification", "segmentation"])
def test_every_task_supplies_the_whole_contract(name):
    kind = task_class(name)
    members = contract_members()
    assert {"ledger_loss", "batch_bytes", "columns", "scalars", "train_meter", "start"} <= members
    instance_only = {"classes", "train_loader", "val_loader"}  # set by __init__ / start
    missing = sorted(member for member in members - instance_only if not hasattr(kind, member))
    assert not missing, f"{kind.__name__} lacks {missing} of the task contract"
    assert set(kind.columns) >= {"epoch", "train_loss"} and set(kind.summary) <= set(kind.columns) | {"val_top5"}
    assert kind.name == name and {task.name for task in task_classes()} == {"classification", "segmentation"}


@pytest.mark.parametrize("module", SHARED)
def test_the_shared_modules_ask_no_task_which_it_is(module):
    text = (PACKAGE / module).read_text()
    asked = [line.strip() for line in text.splitlines() if ASKING.search(line)]
    assert not asked, f"{module} asks which task a run is: {asked}"


def test_a_model_s_task_is_registry_metadata_not_a_built_network():
    def unbuildable_segmenter(**options):
        raise AssertionError("built to learn its task")

    register_arch(unbuildable_segmenter, task="segmentation")
    try:
        assert model_task("unbuildable_segmenter") == "segmentation"
        config = FinetuneConfig("unbuildable_segmenter", "data", "out")
        assert (config.task, config.image_size, config.schedule) == ("segmentation", 512, "poly")
    finally:
        unregister_arch("unbuildable_segmenter")
    assert model_task("wider_resnet38_deeplab3_vistas") == "segmentation" and model_task("resnet50") == \
        "classification" and model_task("no_such_model") is None


def test_the_memory_ledger_uses_each_task_s_own_loss():
    assert ledger_loss_of("deeplabv3_resnet18") is task_class("segmentation").ledger_loss
    assert ledger_loss_of("resnet18") is task_class("classification").ledger_loss
    source = inspect.getsource(task_class("segmentation").ledger_loss)
    assert "SegmentationLoss" in source and "resized" in source
