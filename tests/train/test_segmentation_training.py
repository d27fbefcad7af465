"""Segmentation fine-tuning end to end on real files (the tiny Vistas-layout network, coloured-square scenes): it
learns, the run directory holds what a segmentation run holds, a resume continues exactly, bad options are refused
before anything is written."""

import json

import pytest
import torch
from support.mask_data import CLASSES, write_square_scenes
from support.segmentation_fixtures import tiny_arch_registered

from iabn_zoo.errors import InvalidArgumentError
from iabn_zoo.factory import load_run
from iabn_zoo.system.tensor_files import read_safetensors
from iabn_zoo.tasks.confusion import ConfusionMatrix
from iabn_zoo.train.config import FinetuneConfig
from iabn_zoo.train.finetune import finetune
from iabn_zoo.weights.run_reader import read_metrics, read_run

MODEL = "tiny_vistas_deeplab3"
FAST = dict(batch_size=4, image_size=32, num_workers=0, progress=False, optimizer="adamw", lr=0.01)


class Interrupted(Exception):
    """Stands for a job killed between two epochs."""


@pytest.fixture(autouse=True)
def tiny_arch():
    with tiny_arch_registered():
        yield


@pytest.fixture(scope="module")
def data(module_tmp):
    return write_square_scenes(module_tmp("squares") / "data", train=24, val=8)


@pytest.fixture(scope="module")
def trained(data, module_tmp):
    with tiny_arch_registered():
        return finetune(MODEL, data, module_tmp("run") / "run", epochs=6, augment="none", **FAST)


def trivial_miou(data) -> float:
    """mIoU of the all-background predictor on the validation masks."""
    from iabn_zoo.data.segmentation_data import open_segmentation_split

    dataset = open_segmentation_split(data)
    confusion = ConfusionMatrix(len(CLASSES))
    for index in range(len(dataset)):
        _, mask = dataset[index]
        confusion.update(torch.zeros_like(mask), mask)
    return confusion.miou()


def test_fine_tuning_learns_well_above_the_all_background_predictor(trained, data):
    trivial = trivial_miou(data)
    final = trained.final
    assert final["val_miou"] >= 2 * trivial, f"mIoU {final['val_miou']:.1f} vs all-background {trivial:.1f}"
    assert final["train_loss"] < trained.metrics[0]["train_loss"]


def test_run_directory_holds_a_segmentation_run(trained):
    run = trained.run_dir
    records = read_metrics(run)
    assert [r["epoch"] for r in records] == list(range(1, 7))
    assert {"epoch", "train_loss", "val_miou", "val_pixel_accuracy", "val_per_class_iou", "lr", "images_per_s",
            "epoch_time_s"} <= set(records[-1])
    assert len(records[-1]["val_per_class_iou"]) == len(CLASSES)
    document = json.loads((run / "config.json").read_text())
    assert document["task"] == "segmentation" and document["classes"] == list(CLASSES)
    assert document["arch"] == MODEL and document["arch_kwargs"]["num_classes"] == len(CLASSES)
    assert document["ignore_index"] == 255
    assert document["preprocessing"]["crop"] == [32, 32] and document["preprocessing"]["long_side"] == 32
    assert document["config"]["schedule"] == "poly"
    assert read_run(run).task == "segmentation"
    samples = sorted(p.name for p in (run / "samples").iterdir())
    assert samples[:2] == ["00_predicted.png", "00_true.png"] and len(samples) == 8
    assert (run / "curves.png").stat().st_size > 0 and any((run / "tensorboard").iterdir())
    model = load_run(run)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), trained.model.eval()(x))


def test_resume_continues_exactly(data, tmp_path):
    options = dict(epochs=3, augment="standard", **FAST)
    whole = finetune(MODEL, data, tmp_path / "whole", **options)

    def stop_after_first(record):
        if record["epoch"] == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        finetune(MODEL, data, tmp_path / "parts", on_epoch_end=stop_after_first, **options)
    resumed = finetune(MODEL, data, tmp_path / "parts", resume=True, num_workers=0, progress=False)
    drop = ("images_per_s", "epoch_time_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed.metrics] == \
           [{k: v for k, v in r.items() if k not in drop} for r in whole.metrics]
    first, second = read_safetensors(tmp_path / "whole" / "model.safetensors"), \
        read_safetensors(tmp_path / "parts" / "model.safetensors")
    unequal = [k for k in first if not torch.equal(first[k], second[k])]
    assert not unequal, f"resumed weights differ from the uninterrupted run's in {unequal[:5]}"


@pytest.mark.parametrize("option, value, named", [
    ("loss", "focal", "loss"),
    ("output_stride", 4, "output_stride"),
    ("ohem_threshold", 1.5, "ohem_threshold"),
    ("ohem_min_kept", 0, "ohem_min_kept"),
    ("class_weights", [1.0, -1.0], "class_weights"),
    ("scale_range", (2.0, 0.5), "scale_range"),
    ("image_size", (32, 4), "image_size"),
    ("augment", "imagenet", "augment"),
    ("task", "classification", "task"),
    ("num_classes", 0, "num_classes"),
])
def test_bad_segmentation_options_are_refused_before_anything_is_written(data, tmp_path, option, value, named):
    with pytest.raises(InvalidArgumentError, match=named):
        finetune(MODEL, data, tmp_path / "run", **{**FAST, option: value})
    assert not (tmp_path / "run").exists()


def test_class_weights_must_give_one_weight_per_class(data, tmp_path):
    with pytest.raises(InvalidArgumentError, match="class_weights"):
        finetune(MODEL, data, tmp_path / "run", class_weights=[1.0, 2.0], **FAST)
    assert not (tmp_path / "run").exists()


def test_segmentation_options_are_refused_for_a_classifier():
    with pytest.raises(InvalidArgumentError, match="loss"):
        FinetuneConfig("resnet18", "d", "o", loss="ohem")
    with pytest.raises(InvalidArgumentError, match="image_size"):
        FinetuneConfig("resnet18", "d", "o", image_size=(32, 16))


def test_the_task_and_its_defaults_follow_from_the_model():
    segmentation = FinetuneConfig(MODEL, "d", "o")
    classification = FinetuneConfig("resnet18", "d", "o")
    assert (segmentation.task, segmentation.schedule, segmentation.augment, segmentation.image_size) == \
        ("segmentation", "poly", "standard", 512)
    assert (classification.task, classification.schedule, classification.augment, classification.image_size) == \
        ("classification", "cosine", "imagenet", 224)
