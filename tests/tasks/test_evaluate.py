"""Evaluation: top-1/top-5 on a set with known answers, the ten-crop path, class matching, bad input."""

import pytest
import torch
import torch.nn as nn
from PIL import Image

from iabn_zoo.data.folders import ImageFolder
from iabn_zoo.data.transforms import eval_transform
from iabn_zoo.errors import DataError, InvalidArgumentError, UnknownNameError
from iabn_zoo.tasks.accuracy import count_correct
from iabn_zoo.tasks.classifiers import label_aliases
from iabn_zoo.tasks.evaluate import class_index_map, evaluate, evaluate_model, evaluation_root

NUM_CLASSES = 7
SIZE = 16


def level(k: int) -> int:
    """The red value that stands for class k."""
    return 20 + 30 * k


class RedAtCenter(nn.Module):
    """Scores class k by -|red - level(k)| at the centre 2x2 pixels of its input: its answers are known in advance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        red = x[:, 0, h // 2 - 1:h // 2 + 1, w // 2 - 1:w // 2 + 1].mean(dim=(1, 2)) * 255
        levels = torch.tensor([level(k) for k in range(NUM_CLASSES)], dtype=x.dtype)
        return -(red.view(-1, 1) - levels).abs()


def save_image(path, red: int, centre_red: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (SIZE, SIZE), (red, 0, 0))
    if centre_red is not None:
        image.paste((centre_red, 0, 0), (3 * SIZE // 8, 3 * SIZE // 8, 5 * SIZE // 8, 5 * SIZE // 8))
    image.save(path)


def folder_dataset(root, *, ten_crops=False):
    classes = [f"c{k}" for k in range(NUM_CLASSES)]
    transform = eval_transform(SIZE // 2 if ten_crops else SIZE, 0, ten_crops=ten_crops, mean=(0, 0, 0),
                               std=(1, 1, 1))
    return ImageFolder(root, transform, classes=classes)


def test_top1_and_top5_on_a_set_with_known_answers(tmp_path):
    for k in range(NUM_CLASSES):  # two images per class that the model gets right
        save_image(tmp_path / f"c{k}" / "a.png", level(k))
        save_image(tmp_path / f"c{k}" / "b.png", level(k))
    save_image(tmp_path / "c6" / "far.png", level(0))  # predicted 0: c6 is outside the top five (0..4)
    save_image(tmp_path / "c3" / "near.png", level(0))  # predicted 0: c3 is within the top five
    scores = evaluate_model(RedAtCenter(), folder_dataset(tmp_path), batch_size=5)
    assert scores["images"] == 16
    assert scores["top1"] == pytest.approx(100 * 14 / 16)
    assert scores["top5"] == pytest.approx(100 * 15 / 16)


def test_ten_crops_average_the_crops_and_change_the_answer(tmp_path):
    # Border says class 5, centre says class 1: the center crop sees class 1; eight of the ten crops have
    # their centre on the border, so the averaged scores say class 5.
    save_image(tmp_path / "c1" / "x.png", level(5), centre_red=level(1))
    for k in (0, 2, 3, 4, 5, 6):
        save_image(tmp_path / f"c{k}" / "plain.png", level(k))
    center = evaluate_model(RedAtCenter(), folder_dataset(tmp_path))
    ten = evaluate_model(RedAtCenter(), folder_dataset(tmp_path, ten_crops=True), ten_crops=True)
    assert center["top1"] == pytest.approx(100.0)
    assert ten["top1"] == pytest.approx(100 * 6 / 7)
    assert ten["images"] == center["images"] == 7


def test_count_correct_caps_k_at_the_number_of_classes():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert count_correct(logits, torch.tensor([1, 1, 0])) == (1, 3)


def test_folders_match_outputs_by_name_synset_or_sorted_order(tmp_path):
    imagenet = label_aliases("imagenet", 1000)
    assert class_index_map(["n01443537", "tench"], imagenet, tmp_path) == {"n01443537": 1, "tench": 0}
    named = [{"cat"}, {"dog"}]
    assert class_index_map(["dog"], named, tmp_path) == {"dog": 1}
    assert class_index_map(["a", "b"], [set(), set()], tmp_path) == {"a": 0, "b": 1}
    with pytest.raises(DataError, match="horse"):
        class_index_map(["dog", "horse"], named, tmp_path)


def test_evaluation_root_prefers_a_val_split(tmp_path):
    save_image(tmp_path / "val" / "c0" / "a.png", 10)
    assert evaluation_root(tmp_path) == tmp_path / "val"
    assert evaluation_root(tmp_path / "val") == tmp_path / "val"


def test_bad_inputs_raise_typed_errors(tmp_path):
    with pytest.raises(UnknownNameError):
        evaluate("no_such_model", tmp_path)
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        evaluate("resnet18", tmp_path, batch_size=0)
    with pytest.raises(InvalidArgumentError, match="device 'tpu'"):
        evaluate("resnet18", tmp_path, device="tpu")
    with pytest.raises(DataError, match="no class folders"):
        evaluate("resnet18", tmp_path)
    with pytest.raises(DataError, match="no class folders"):
        evaluate_model(RedAtCenter(), ImageFolder(tmp_path))


def test_ten_crops_larger_than_the_image_are_refused(tmp_path):
    for k in range(NUM_CLASSES):
        save_image(tmp_path / f"c{k}" / "a.png", level(k))
    dataset = ImageFolder(tmp_path, eval_transform(SIZE * 2, 0, ten_crops=True))
    with pytest.raises(InvalidArgumentError, match="larger than the image"):
        evaluate_model(RedAtCenter(), dataset, ten_crops=True)
