"""Segmentation data sets on real files: the three layouts, their detection, class tables (the official Cityscapes
id table, Vistas' config.json), classes.csv, and every bad input refused with a DataError naming the file."""

import json
import warnings

import pytest
import torch
from PIL import Image
from support.segmentation_layouts import (CITYSCAPES_IDS, FOLDER_CLASSES, scene, vistas_config,
                                          write_cityscapes_data, write_folders_data, write_vistas_data)

from iabn_zoo.data.labels import BUILTIN_LABELS, read_class_csv, vistas_classes
from iabn_zoo.data.segmentation_data import (detect_layout, is_segmentation_data, open_segmentation_data,
                                             open_segmentation_split)
from iabn_zoo.errors import DataError, InvalidArgumentError

# cityscapesScripts' labels table: (name, id, trainId), 255 = no training id. Written out here on purpose, apart
# from the library's copy, so that a typo in either shows.
CITYSCAPES_OFFICIAL = [
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255), ("out of roi", 3, 255),
    ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255), ("road", 7, 0), ("sidewalk", 8, 1),
    ("parking", 9, 255), ("rail track", 10, 255), ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4),
    ("guard rail", 14, 255), ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8), ("terrain", 22, 9), ("sky", 23, 10),
    ("person", 24, 11), ("rider", 25, 12), ("car", 26, 13), ("truck", 27, 14), ("bus", 28, 15),
    ("caravan", 29, 255), ("trailer", 30, 255), ("train", 31, 16), ("motorcycle", 32, 17), ("bicycle", 33, 18),
]


def files_under(root):
    return sorted(str(path) for path in root.rglob("*"))


def pixels(mask):
    """The int64 (H, W) values of an 'L' image."""
    return torch.frombuffer(bytearray(mask.tobytes()), dtype=torch.uint8).view(mask.height, mask.width).long()


def mask_of(dataset, index):
    return dataset[index][1]


def test_each_layout_is_detected_and_nothing_else(tmp_path):
    assert detect_layout(write_folders_data(tmp_path / "f")) == "folders"
    assert detect_layout(write_cityscapes_data(tmp_path / "c")) == "cityscapes"
    assert detect_layout(write_vistas_data(tmp_path / "v")) == "vistas"
    (tmp_path / "imagefolder" / "train" / "cats").mkdir(parents=True)
    for folder in (tmp_path / "imagefolder", tmp_path / "missing", tmp_path / "f" / "train" / "images"):
        assert detect_layout(folder) is None and not is_segmentation_data(folder)
    assert is_segmentation_data(tmp_path / "c")


@pytest.mark.parametrize("extension", [".png", ".jpg"])
def test_folders_layout_gives_normalised_images_and_the_written_masks(tmp_path, extension):
    write_folders_data(tmp_path, train=3, val=2, extension=extension)
    data = open_segmentation_data(tmp_path)
    assert (data.layout, data.classes, data.ignore_index) == ("folders", list(FOLDER_CLASSES), 255)
    assert (len(data.train), len(data.val)) == (3, 2)
    image, mask = data.val[1]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 48)
    assert mask.dtype == torch.int64 and mask.shape == (32, 48)
    expected = pixels(scene(101)[1])
    expected[0, 0] = 255
    assert torch.equal(mask, expected), f"{(mask != expected).sum()} pixels differ from the written mask"
    assert image.mean().abs() < 3  # normalised, not 0..255


def test_classes_csv_without_header_and_num_classes_without_csv(tmp_path):
    write_folders_data(tmp_path, classes_csv=False)
    with pytest.raises(DataError, match="classes.csv.*num_classes"):
        open_segmentation_data(tmp_path)
    assert open_segmentation_data(tmp_path, num_classes=5).classes == [f"class {i}" for i in range(5)]
    (tmp_path / "classes.csv").write_text('1,"red, bright"\n0,background\n\n3,blue\n2,green\n')
    assert open_segmentation_data(tmp_path).classes == ["background", "red, bright", "green", "blue"]
    with pytest.raises(DataError, match="lists 4 classes but num_classes is 6"):
        open_segmentation_data(tmp_path, num_classes=6)


@pytest.mark.parametrize("text, problem", [("index,name\n0,a\n1\n", "line 3"), ("0,a\nx,b\n", "line 2.*integer"),
                                           ("0,a\n0,b\n", "line 2.*twice"), ("0,a\n2,c\n", "missing \\[1\\]"),
                                           ("index,name\n", "no classes")])
def test_a_malformed_classes_csv_is_refused_with_its_line(tmp_path, text, problem):
    write_folders_data(tmp_path)
    (tmp_path / "classes.csv").write_text(text)
    before = files_under(tmp_path)
    with pytest.raises(DataError, match=problem) as caught:
        open_segmentation_data(tmp_path)
    assert "classes.csv" in str(caught.value) and files_under(tmp_path) == before


def test_cityscapes_label_ids_map_to_the_official_train_ids_for_every_value(tmp_path):
    write_cityscapes_data(tmp_path)
    every_value = Image.frombytes("L", (16, 16), bytes(range(256)))
    mask_path = next((tmp_path / "gtFine" / "val").rglob("*_labelIds.png"))
    image_path = next((tmp_path / "leftImg8bit" / "val").rglob("*_leftImg8bit.png"))
    every_value.save(mask_path)
    Image.new("RGB", (16, 16)).save(image_path)
    data = open_segmentation_data(tmp_path)
    assert data.layout == "cityscapes"
    assert data.classes == [name for name, _, train_id in CITYSCAPES_OFFICIAL if train_id != 255]
    official = {label_id: train_id for _, label_id, train_id in CITYSCAPES_OFFICIAL}
    expected = torch.tensor([official.get(value, 255) for value in range(256)]).view(16, 16)
    index = [image for image, _ in data.val.pairs].index(image_path)
    got = mask_of(data.val, index).flatten().tolist()
    wrong = [(value, got[value], expected.flatten()[value].item()) for value in range(256)
             if got[value] != expected.flatten()[value]]
    assert not wrong, f"(label id, got, official train id) differ: {wrong}"


def test_cityscapes_scene_masks_hold_train_ids(tmp_path):
    data = open_segmentation_data(write_cityscapes_data(tmp_path), splits=("train",))
    raw = pixels(scene(0, values=CITYSCAPES_IDS)[1])
    table = {7: 0, 26: 13, 9: 255, 0: 255}
    assert torch.equal(mask_of(data.train, 0), raw.apply_(table.get)) and data.val is None


def test_vistas_evaluated_labels_are_the_classes_and_the_rest_is_ignored(tmp_path):
    data = open_segmentation_data(write_vistas_data(tmp_path))
    assert (data.layout, data.classes) == ("vistas", ["Bird", "Curb", "Sky", "Car"])
    raw = pixels(scene(1, values=(4, 0, 2, 3))[1])
    expected = torch.where(raw == 4, 255, raw)  # raw 4 is "unlabeled" (evaluate false); 0..3 the classes
    assert torch.equal(mask_of(data.train, 1), expected)


def test_vistas_v12_config_lines_up_with_the_vistas_network_classes(tmp_path):
    rows = read_class_csv(BUILTIN_LABELS["vistas"])
    labels = [(row["id"], row["name"], True) for row in rows] + [("void--unlabeled", "Unlabeled", False)]
    write_vistas_data(tmp_path, labels=labels)
    data = open_segmentation_data(tmp_path, splits=("val",))
    assert len(labels) == 66 and data.classes == vistas_classes()


def test_vistas_versioned_folders_and_config_name_are_found(tmp_path):
    write_vistas_data(tmp_path)
    (tmp_path / "config.json").rename(tmp_path / "config_v1.2.json")
    for split in ("training", "validation"):
        (tmp_path / split / "v1.2").mkdir()
        (tmp_path / split / "labels").rename(tmp_path / split / "v1.2" / "labels")
    data = open_segmentation_data(tmp_path)
    assert data.layout == "vistas" and len(data.val) == 2 and data.classes[0] == "Bird"


def test_vistas_bad_config_and_label_ids_beyond_it_are_refused(tmp_path):
    write_vistas_data(tmp_path)
    label = next((tmp_path / "training" / "labels").iterdir())
    image = Image.open(label)
    image.putpixel((3, 3), 5)  # 5 labels in the config: ids 0..4
    image.save(label)
    with pytest.raises(DataError, match=f"{label}.*\\[5\\]"):
        open_segmentation_data(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"labels": [{"name": "x"}]}))
    with pytest.raises(DataError, match="config.json.*Vistas config"):
        open_segmentation_data(tmp_path)
    config = vistas_config()
    for label_entry in config["labels"]:
        label_entry["evaluate"] = False
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match="no label has 'evaluate'"):
        open_segmentation_data(tmp_path)


def test_open_split_takes_a_root_or_one_split_folder_of_each_layout(tmp_path):
    write_folders_data(tmp_path / "f", train=3, val=2)
    write_cityscapes_data(tmp_path / "c", per_split=2)
    write_vistas_data(tmp_path / "v", per_split=2)
    assert len(open_segmentation_split(tmp_path / "f")) == 2
    assert len(open_segmentation_split(tmp_path / "f", split="train")) == 3
    assert open_segmentation_split(tmp_path / "f" / "train").classes == list(FOLDER_CLASSES)
    assert open_segmentation_split(tmp_path / "c" / "leftImg8bit" / "val").layout == "cityscapes"
    assert open_segmentation_split(tmp_path / "v" / "validation").classes == ["Bird", "Curb", "Sky", "Car"]
    with pytest.raises(DataError, match="is not a segmentation data set"):
        open_segmentation_split(tmp_path)


def _break_folders(root, problem):
    """Apply `problem` to a folders data set; returns the path the error must name."""
    masks = root / "val" / "masks"
    if problem == "missing mask":
        (masks / "001.png").unlink()
        return root / "val" / "images" / "001.png"
    if problem == "size":
        Image.new("L", (47, 32)).save(masks / "001.png")
    elif problem == "value":
        Image.new("L", (48, 32), 4).save(masks / "001.png")
    elif problem == "colour":
        Image.new("RGB", (48, 32), (255, 0, 0)).save(masks / "001.png")
    elif problem == "empty":
        for path in (root / "val" / "images").iterdir():
            path.unlink()
        return root / "val"
    return masks / "001.png"


@pytest.mark.parametrize("problem, message", [("missing mask", "no mask"), ("size", "47x32.*48x32"),
                                              ("value", r"value\(s\) \[4\].*0..3"), ("colour", "not colours"),
                                              ("empty", "no images")])
def test_each_bad_input_is_a_data_error_naming_the_file_and_nothing_is_written(tmp_path, problem, message):
    write_folders_data(tmp_path)
    named = _break_folders(tmp_path, problem)
    before = files_under(tmp_path)
    with pytest.raises(DataError, match=message) as caught:
        open_segmentation_data(tmp_path)
    assert str(named) in str(caught.value) and files_under(tmp_path) == before


def test_ignore_index_is_configurable_and_must_not_be_a_class(tmp_path):
    write_folders_data(tmp_path)
    with pytest.raises(DataError, match="255"):  # the written masks use 255, no longer the ignore index
        open_segmentation_data(tmp_path, ignore_index=10)
    with pytest.raises(InvalidArgumentError, match="ignore_index"):
        open_segmentation_data(tmp_path, ignore_index=3)
    for mask in (tmp_path / "val" / "masks").iterdir():  # 16-bit masks, ignore 300
        Image.new("I;16", (48, 32), 300).save(mask)
    data = open_segmentation_data(tmp_path, ignore_index=300, num_classes=4, splits=("val",))
    assert torch.equal(mask_of(data.val, 0), torch.full((32, 48), 300))


@pytest.mark.parametrize("broken", ["images/001.png", "masks/001.png"])
def test_unreadable_files_are_skipped_with_a_warning_or_refused(tmp_path, broken):
    write_folders_data(tmp_path)
    path = tmp_path / "val" / broken
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DataError, match=f"(?s)1 unreadable file.*{path}"):
        open_segmentation_data(tmp_path, on_error="raise")
    with pytest.warns(UserWarning, match=str(path)):
        data = open_segmentation_data(tmp_path, on_error="skip")
    assert len(data.val) == 2 and len(data.train) == 3


def test_a_file_broken_after_the_scan_is_replaced_in_skip_mode(tmp_path):
    write_folders_data(tmp_path)
    data = open_segmentation_data(tmp_path, splits=("val",))
    path = tmp_path / "val" / "images" / "001.png"
    path.write_bytes(b"not a png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image, mask = data.val[1]
    assert image.shape == (3, 32, 48) and any(str(path) in str(w.message) for w in caught)


def test_an_image_whose_exif_turns_it_is_paired_with_a_mask_of_the_turned_size(tmp_path):
    write_folders_data(tmp_path, val=1)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image_path = tmp_path / "val" / "images" / "000.png"
    image_path.unlink()
    Image.new("RGB", (48, 32), (255, 0, 0)).save(image_path.with_suffix(".jpg"), exif=exif)
    Image.new("L", (32, 48), 1).save(tmp_path / "val" / "masks" / "000.png")
    image, mask = open_segmentation_data(tmp_path, splits=("val",)).val[0]
    assert image.shape == (3, 48, 32) and mask.shape == (48, 32)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_files_over_pillows_pixel_limit_are_unreadable(tmp_path, monkeypatch):
    write_folders_data(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 48 * 32 - 1)
    with pytest.raises(DataError, match="(?s)3 unreadable file.*exceed Pillow's limit"):
        open_segmentation_data(tmp_path, on_error="raise", splits=("val",))
