"""Digit scenes: the folders layout on disk, masks that say what was pasted, ignore borders, determinism, a held-out
digit split, and bad arguments refused before anything is written."""

import numpy as np
import pytest
from PIL import Image

from iabn_zoo.data.labels import read_class_csv
from iabn_zoo.data.segmentation_data import open_segmentation_data
from iabn_zoo.demo.scenes import (CLASS_NAMES, IGNORE_INDEX, digit_split, load_sources, make_scene,
                                  write_digit_scenes)
from iabn_zoo.errors import InvalidArgumentError


def read_split(root, split):
    names = sorted(p.name for p in (root / split / "images").iterdir())
    assert names == sorted(p.name for p in (root / split / "masks").iterdir()), f"{split}: images and masks differ"
    return [(Image.open(root / split / "images" / n), Image.open(root / split / "masks" / n)) for n in names]


def test_writes_the_folders_layout_with_class_indices_and_a_class_csv(tmp_path):
    counts = write_digit_scenes(tmp_path, train=12, val=5, size=48, seed=3)
    assert counts == {"train": 12, "val": 5}
    assert [row["name"] for row in read_class_csv(tmp_path / "classes.csv")] == CLASS_NAMES
    assert CLASS_NAMES[:2] == ["background", "digit 0"] and CLASS_NAMES[10] == "digit 9"
    for split, count in counts.items():
        pairs = read_split(tmp_path, split)
        assert len(pairs) == count
        for image, mask in pairs:
            assert (image.mode, image.size, mask.mode, mask.size) == ("RGB", (48, 48), "L", (48, 48))
            values = set(np.unique(np.asarray(mask)).tolist())
            assert values <= set(range(11)) | {IGNORE_INDEX}, f"unexpected mask values {values}"
            assert values & set(range(1, 11)), "a scene without any digit pixel"
    data = open_segmentation_data(tmp_path)  # the library's own reader: every check of the folders layout passes
    assert (data.layout, data.classes, len(data.train), len(data.val)) == ("folders", CLASS_NAMES, 12, 5)


def test_masks_say_which_pixels_were_painted_and_borders_are_ignored():
    pools, _ = load_sources()
    background = np.full((160, 160, 3), (10, 200, 30), dtype=np.uint8)  # one colour: painted pixels stand out
    rng = np.random.default_rng(0)
    for _ in range(30):
        image, mask = make_scene(pools["train"], [background], 64, (1, 2), (0.5, 0.9), rng)
        pixels, labels = np.asarray(image).astype(int), np.asarray(mask)
        changed = np.abs(pixels - (10, 200, 30)).max(axis=2) > 0
        assert np.array_equal(changed, labels != 0), \
            f"{np.sum(changed != (labels != 0))} pixels where 'painted' and 'labelled as a digit or ignored' differ"
        strokes, ignored = (labels > 0) & (labels <= 10), labels == IGNORE_INDEX
        assert ignored.sum() > 0 and strokes.sum() > ignored.sum() / 4
        # an anti-aliased border separates every stroke from the photograph: no stroke pixel touches background
        padded = np.pad(labels == 0, 1)
        touching = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
        assert not np.any(strokes & touching), f"{np.sum(strokes & touching)} stroke pixels touch the background"


def test_the_same_seed_writes_the_same_files_and_another_seed_others(tmp_path):
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        write_digit_scenes(tmp_path / name, train=6, val=3, size=32, seed=seed)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 18
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert sum((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in files) >= 16


def test_validation_scenes_do_not_depend_on_the_training_count(tmp_path):
    write_digit_scenes(tmp_path / "few", train=2, val=4, size=32)
    write_digit_scenes(tmp_path / "many", train=9, val=4, size=32)
    for path in (tmp_path / "few" / "val").rglob("*.png"):
        assert path.read_bytes() == (tmp_path / "many" / path.relative_to(tmp_path / "few")).read_bytes()


def test_held_out_digits_are_every_fifth_of_each_class_and_never_used_for_training():
    from sklearn.datasets import load_digits

    digits = load_digits()
    splits = digit_split(digits.target)
    for label in range(10):
        of_class = [s for s, t in zip(splits, digits.target) if t == label]
        assert of_class.count("val") == len(of_class) // 5
    pools, _ = load_sources()
    assert len(pools["train"]) + len(pools["val"]) == len(digits.images)
    for split in ("train", "val"):
        indices = [i for i, s in enumerate(splits) if s == split]
        assert [d for _, d in pools[split]] == [int(digits.target[i]) for i in indices], split
        assert all(np.array_equal(alpha * 16, digits.images[i]) for (alpha, _), i in zip(pools[split], indices)), split


@pytest.mark.parametrize("arguments, named", [
    ({"train": -1}, "train"), ({"val": 1.5}, "val"), ({"size": 8}, "size"),
    ({"digits_per_scene": (2, 1)}, "digits_per_scene"), ({"digits_per_scene": (0, 1)}, "digits_per_scene"),
    ({"digit_scale": (0.5, 1.2)}, "digit_scale"), ({"digit_scale": (0, 0.5)}, "digit_scale"),
])
def test_bad_arguments_are_refused_by_name_before_anything_is_written(tmp_path, arguments, named):
    with pytest.raises(InvalidArgumentError, match=named):
        write_digit_scenes(tmp_path / "data", **{"train": 2, "val": 2, **arguments})
    assert not (tmp_path / "data").exists()
