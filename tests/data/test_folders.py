"""Folder data sets: layout, extensions, image modes, unreadable files, split checks, seeded augmentation."""

import warnings

import pytest
import torch
from PIL import Image
from support.image_folders import write_colour_dataset, write_colour_split

from iabn_zoo.data.folders import ImageFolder, load_splits
from iabn_zoo.data.transforms import ToTensor, train_transform
from iabn_zoo.errors import DataError, InvalidArgumentError


def save(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def test_classes_are_sorted_folders_and_extensions_match_in_any_case(tmp_path):
    save(tmp_path / "zebra" / "a.PNG", Image.new("RGB", (4, 4)))
    save(tmp_path / "zebra" / "b.JpG", Image.new("RGB", (4, 4)))
    save(tmp_path / "ant" / "sub" / "c.bmp", Image.new("RGB", (4, 4)))
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    save(tmp_path / "ant" / ".hidden.png", Image.new("RGB", (4, 4)))
    (tmp_path / ".cache").mkdir()
    dataset = ImageFolder(tmp_path)
    assert dataset.classes == ["ant", "zebra"]
    assert sorted(p.name for p, _ in dataset.samples) == ["a.PNG", "b.JpG", "c.bmp"]
    assert dataset.targets.count(0) == 1 and dataset.targets.count(1) == 2


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_any_image_mode_is_read_as_rgb(tmp_path, mode):
    save(tmp_path / "only" / "x.png" if mode != "CMYK" else tmp_path / "only" / "x.jpg", Image.new(mode, (5, 3)))
    image, target = ImageFolder(tmp_path)[0]
    assert image.mode == "RGB" and image.size == (5, 3) and target == 0


def test_empty_folder_and_folder_without_classes_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="no class folders"):
        ImageFolder(tmp_path)
    (tmp_path / "cats").mkdir()
    with pytest.raises(DataError, match="no images found"):
        ImageFolder(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        ImageFolder(tmp_path / "missing")


def test_a_class_folder_without_images_is_named(tmp_path):
    save(tmp_path / "cats" / "a.png", Image.new("RGB", (4, 4)))
    (tmp_path / "dogs").mkdir()
    with pytest.raises(DataError, match="dogs"):
        ImageFolder(tmp_path)


def test_corrupt_image_is_skipped_with_a_warning_naming_it(tmp_path):
    write_colour_split(tmp_path, 2, size=6)
    bad = tmp_path / "red" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.warns(UserWarning, match="broken.png"):
        dataset = ImageFolder(tmp_path)
    assert len(dataset) == 6 and bad not in [p for p, _ in dataset.samples]
    assert dataset.skipped[0][0] == bad


def test_corrupt_image_with_on_error_raise_names_the_file(tmp_path):
    write_colour_split(tmp_path, 2, size=6)
    (tmp_path / "red" / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="broken.jpg"):
        ImageFolder(tmp_path, on_error="raise")


def truncate_after_verify(tmp_path):
    """A dataset whose first image is cut short after it was scanned (as if damaged while training)."""
    write_colour_split(tmp_path, 3, size=32)
    dataset = ImageFolder(tmp_path, ToTensor())
    path = dataset.samples[0][0]
    path.write_bytes(path.read_bytes()[:60])
    return dataset, path


def test_image_that_breaks_after_the_scan_is_replaced_not_fatal_in_a_worker(tmp_path):
    dataset, path = truncate_after_verify(tmp_path)
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(loader)
    assert sum(len(targets) for _, targets in batches) == len(dataset)
    with pytest.warns(UserWarning, match=path.name):
        image, target = dataset[0]
    assert torch.equal(image, dataset[1][0]) and target == dataset.samples[1][1]


def test_image_that_breaks_after_the_scan_raises_data_error_in_raise_mode(tmp_path):
    dataset, path = truncate_after_verify(tmp_path)
    dataset.on_error = "raise"
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=1)
    with pytest.raises(DataError, match=path.name):
        list(loader)


def test_bad_on_error_value_is_refused(tmp_path):
    with pytest.raises(InvalidArgumentError, match="on_error"):
        ImageFolder(tmp_path, on_error="ignore")


def test_splits_share_one_class_list(tmp_path):
    train, val = load_splits(write_colour_dataset(tmp_path, train=2, val=1, size=6), train_transform=None,
                             val_transform=None)
    assert train.classes == val.classes == ["blue", "green", "red"]
    assert len(train) == 6 and len(val) == 3


def test_class_mismatch_between_train_and_val_is_reported(tmp_path):
    write_colour_dataset(tmp_path, train=2, val=1, size=6)
    (tmp_path / "val" / "green").rename(tmp_path / "val" / "yellow")
    with pytest.raises(DataError, match="missing in .*green.*not in .*yellow"):
        load_splits(tmp_path, train_transform=None, val_transform=None)


def test_one_class_or_missing_split_is_refused(tmp_path):
    only_red = {"red": (200, 0, 0)}
    write_colour_dataset(tmp_path, train=2, val=1, size=6, colours=only_red)
    with pytest.raises(DataError, match="at least 2"):
        load_splits(tmp_path, train_transform=None, val_transform=None)
    with pytest.raises(DataError, match="val"):
        load_splits(tmp_path / "train", train_transform=None, val_transform=None)


def test_seeded_augmentation_depends_on_seed_epoch_and_index_only(tmp_path):
    write_colour_split(tmp_path, 2, size=24)
    dataset = ImageFolder(tmp_path, train_transform(16, "imagenet"), seed=11)
    first = dataset[3][0]
    torch.manual_seed(123)  # the global generator's state must not matter
    assert torch.equal(dataset[3][0], first)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[3][0], first)
    loader = torch.utils.data.DataLoader(dataset, batch_size=6, num_workers=1)
    assert torch.equal(next(iter(loader))[0][3], dataset[3][0])
