"""The demo's segmentation part: digit scenes (`scenes`), a DeepLabV3 whose backbone is the demo's own digit
classifier (resnet18 by default), fine-tuned through `finetune` like any segmentation run; its held-out mIoU beside
the trivial all-background predictor's, and a picture of its predictions."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .paths import shown
from .scenes import IGNORE_INDEX, write_digit_scenes

PICTURE_ROWS = 8
PICTURE_ZOOM = 3


def all_background_miou(data_dir: Path, classes: list[str]) -> float:
    """The mIoU (percent) of predicting background everywhere on the val split: what learning must beat."""
    from ..data.segmentation_data import open_segmentation_split
    from ..tasks.confusion import ConfusionMatrix

    dataset = open_segmentation_split(data_dir, num_classes=len(classes), ignore_index=IGNORE_INDEX)
    confusion = ConfusionMatrix(len(classes), IGNORE_INDEX)
    for index in range(len(dataset)):
        _, mask = dataset[index]
        confusion.update(torch.zeros_like(mask), mask)
    return confusion.miou()


def write_predictions(run_dir: Path, data_dir: Path, picture: Path) -> None:
    """A PNG of the first val scenes, one per row: photo | predicted classes | true classes (ignored: white)."""
    from ..data.segmentation_data import SegmentationEvalTransform, open_segmentation_split
    from ..tasks.segment import SegmentationPredictor
    from ..tasks.segmentation_runs import segmentation_network
    from ..train.segmentation_pictures import ValidationPicture, panel

    network, classes, prep, ignore_index = segmentation_network(run_dir, progress=False)
    predictor = SegmentationPredictor(network, mean=prep["mean"], std=prep["std"], long_side=None)
    dataset = open_segmentation_split(data_dir, num_classes=len(classes), ignore_index=ignore_index,
                                      transform=SegmentationEvalTransform(mean=prep["mean"], std=prep["std"]))
    rows = []
    for index in range(min(PICTURE_ROWS, len(dataset))):
        image, mask = dataset[index]
        _, predicted = predictor.fuse(image.unsqueeze(0))
        rows.append(panel(ValidationPicture(image, predicted[0].cpu(), mask), classes, ignore_index))
    canvas = Image.new("RGB", (rows[0].width, sum(row.height for row in rows)), "white")
    for number, row in enumerate(rows):
        canvas.paste(row, (0, number * rows[0].height))
    canvas.resize((canvas.width * PICTURE_ZOOM, canvas.height * PICTURE_ZOOM), Image.NEAREST).save(picture)


def segmentation_demo(model: str, workdir: Path, classifier_run: Path, picture: Path, *, epochs: int, scenes: int,
                      kept: bool, batch_size: int = 8) -> dict[str, Any]:
    """Write the scenes, fine-tune DeepLabV3 on them from the classifier's backbone, print and return the scores.

    No augmentation: a mirrored digit is another shape (or no digit at all), and the scenes already vary in size."""
    from ..tasks.segmentation_evaluate import evaluate_segmentation
    from ..train.finetune import finetune

    data_dir = workdir / "scenes"
    counts = write_digit_scenes(data_dir, train=scenes, val=max(scenes // 5, 20), size=64)
    print(f"digit scenes: {counts['train']} training and {counts['val']} validation scenes of 64x64 px "
          f"(held-out digits on crops of scikit-learn's photographs, 11 classes), in {shown(data_dir, kept)}")
    print(f"fine-tuning {model} (output stride 8, backbone from the digit classifier's run) for "
          f"{epochs} epochs on the CPU ...", flush=True)
    start = time.perf_counter()
    finetune(model, data_dir, workdir / "segmentation_run", backbone_weights=str(classifier_run), output_stride=8,
             image_size=64, augment="none", loss="ce", schedule="poly", optimizer="sgd", lr=0.05, epochs=epochs,
             batch_size=batch_size, num_workers=0, device="cpu", progress=False,
             on_epoch_end=lambda r: print(f"  epoch {r['epoch']}: train loss {r['train_loss']:.3f}, "
                                          f"val mIoU {r['val_miou']:.1f}%", flush=True))
    seconds = time.perf_counter() - start
    scores = evaluate_segmentation(workdir / "segmentation_run", data_dir, device="cpu", progress=False)
    trivial = all_background_miou(data_dir, list(scores["per_class_iou"]))
    print(f"held-out mIoU {scores['miou']:.1f}% (pixel accuracy {scores['pixel_accuracy']:.1f}%) on "
          f"{scores['images']} scenes, against {trivial:.1f}% for predicting background everywhere; "
          f"trained in {seconds:.0f} s")
    write_predictions(workdir / "segmentation_run", data_dir, picture)
    print(f"predictions (photo | predicted | true, ignored pixels white) drawn in {picture}")
    return {"miou": scores["miou"], "all_background_miou": trivial, "seconds": seconds}
