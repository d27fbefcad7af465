"""Segmentation scores from the confusion matrix against a direct count over pixels."""

import pytest
import torch

from iabn_zoo.errors import InvalidArgumentError
from iabn_zoo.tasks.confusion import ConfusionMatrix

IGNORE = 255


def direct_scores(predicted: torch.Tensor, target: torch.Tensor, num_classes: int) -> tuple[list, float, float]:
    """Per-class IoU (None: empty union), mIoU over non-empty unions, pixel accuracy, by sets of pixel positions."""
    pairs = [(int(p), int(t)) for p, t in zip(predicted.flatten(), target.flatten()) if int(t) != IGNORE]
    ious = []
    for c in range(num_classes):
        predicted_c = {i for i, (p, _) in enumerate(pairs) if p == c}
        true_c = {i for i, (_, t) in enumerate(pairs) if t == c}
        union = predicted_c | true_c
        ious.append(100.0 * len(predicted_c & true_c) / len(union) if union else None)
    present = [v for v in ious if v is not None]
    accuracy = 100.0 * sum(p == t for p, t in pairs) / len(pairs)
    return ious, sum(present) / len(present), accuracy


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_match_a_direct_count_over_pixels(seed):
    generator = torch.Generator().manual_seed(seed)
    num_classes = 6
    target = torch.randint(0, num_classes - 1, (2, 9, 11), generator=generator)  # class 5 never true
    target[torch.rand(target.shape, generator=generator) < 0.2] = IGNORE
    predicted = torch.where(torch.rand(target.shape, generator=generator) < 0.6, target.clamp(max=num_classes - 1),
                            torch.randint(0, num_classes - 2, target.shape, generator=generator))  # 4, 5 rarely
    confusion = ConfusionMatrix(num_classes, IGNORE)
    confusion.update(predicted[0], target[0])  # accumulating two halves = one count over both
    confusion.update(predicted[1], target[1])
    ious, miou, accuracy = direct_scores(predicted, target, num_classes)
    assert confusion.iou() == pytest.approx(ious, abs=1e-12), f"per-class IoU {confusion.iou()} vs direct {ious}"
    assert confusion.miou() == pytest.approx(miou, abs=1e-12)
    assert confusion.pixel_accuracy() == pytest.approx(accuracy, abs=1e-12)
    assert confusion.pixels == int((target != IGNORE).sum())
    assert confusion.matrix.dtype == torch.int64


def test_a_class_neither_present_nor_predicted_is_left_out_of_the_mean():
    confusion = ConfusionMatrix(3, IGNORE)
    confusion.update(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, IGNORE]))
    # class 0: TP 1, union 2 -> 50; class 1: TP 1, union 2 -> 50; class 2: nowhere -> None
    assert confusion.iou() == [50.0, 50.0, None]
    assert confusion.miou() == 50.0
    assert confusion.pixel_accuracy() == pytest.approx(200 / 3)


def test_mask_values_outside_the_classes_are_refused():
    confusion = ConfusionMatrix(3, IGNORE)
    with pytest.raises(InvalidArgumentError, match="0..2"):
        confusion.update(torch.tensor([0, 1]), torch.tensor([0, 7]))
    with pytest.raises(InvalidArgumentError, match="differ"):
        confusion.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1]))
