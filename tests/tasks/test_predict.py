"""Images of every mode to RGB, class names, preprocessing, and predictions with known answers (library and CLI)."""

import json
import math
import os
import sys

import pytest
import torch
from PIL import Image
from support import forkserver
from support.authors_checkpoints import publish, write_imagenet_checkpoint

import iabn_zoo as zoo
from iabn_zoo.cli.exit_codes import exit_code
from iabn_zoo.cli.main import main
from iabn_zoo.data.images import open_rgb
from iabn_zoo.data.labels import class_colors, class_names, imagenet_classes, vistas_classes
from iabn_zoo.errors import DataError
from iabn_zoo.tasks.predict import predict_images, preprocessing_transform
from iabn_zoo.weights.catalog import unregister_weights

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SMALL = {"mean": list(MEAN), "std": list(STD), "resize": 40, "crop": 32, "interpolation": "bilinear"}
# colour -> the ImageNet class the rigged classifier gives it
ANSWERS = {(255, 0, 0): (280, "grey fox"), (0, 255, 0): (1, "goldfish"), (0, 0, 255): (999, "toilet tissue")}
NAME = "test_colour_resnet18"


def saved(tmp_path, name, image, **options):
    path = tmp_path / name
    image.save(path, **options)
    return path


def palette_image(colour, size=(30, 20)):
    image = Image.new("P", size, 1)
    image.putpalette([0, 0, 0, *colour] + [0] * (3 * 254))
    return image


def sixteen_bit(value, size=(6, 4)):
    image = Image.new("I;16", size)
    image.putdata([value] * (size[0] * size[1]))
    return image


@pytest.mark.parametrize("name, make, expected", [
    ("gray.png", lambda: Image.new("L", (5, 4), 100), (100, 100, 100)),
    ("gray_alpha.png", lambda: Image.new("LA", (5, 4), (100, 0)), (100, 100, 100)),
    ("rgba.png", lambda: Image.new("RGBA", (5, 4), (10, 20, 30, 0)), (10, 20, 30)),
    ("palette.png", lambda: palette_image((200, 10, 10)), (200, 10, 10)),
    ("palette.gif", lambda: palette_image((0, 255, 0)), (0, 255, 0)),
    ("bilevel.png", lambda: Image.new("1", (5, 4), 1), (255, 255, 255)),
    ("sixteen.png", lambda: sixteen_bit(257 * 100), (100, 100, 100)),
    ("sixteen_white.png", lambda: sixteen_bit(65535), (255, 255, 255)),
    ("int32.tif", lambda: Image.new("I", (5, 4), 257 * 50), (50, 50, 50)),
    ("float.tif", lambda: Image.new("F", (5, 4), 42.0), (42, 42, 42)),
    ("cmyk.tif", lambda: Image.new("CMYK", (5, 4), (0, 255, 255, 0)), (255, 0, 0)),
])
def test_every_mode_opens_as_rgb(tmp_path, name, make, expected):
    image = open_rgb(saved(tmp_path, name, make()))
    assert image.mode == "RGB"
    assert image.getpixel((1, 1)) == expected


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (8, 2), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    assert open_rgb(saved(tmp_path, "rotated.jpg", image, exif=exif)).size == (2, 8)


@pytest.mark.parametrize("case", ["text", "truncated", "missing", "directory", "empty"])
def test_unreadable_images_raise_data_error_naming_the_file(tmp_path, case):
    path = tmp_path / "photo.png"
    if case == "text":
        path.write_text("<html>not an image</html>")
    elif case == "truncated":
        full = saved(tmp_path, "full.png", Image.effect_noise((64, 64), 50).convert("RGB"))
        path.write_bytes(full.read_bytes()[:200])
    elif case == "directory":
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    with pytest.raises(DataError) as error:
        open_rgb(path)
    assert str(path) in str(error.value)


def test_decompression_bomb_is_a_data_error(tmp_path, monkeypatch):
    path = saved(tmp_path, "bomb.png", Image.new("L", (40, 40)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataError, match="decompression bomb") as error:
        open_rgb(path)
    assert str(path) in str(error.value)


def test_shipped_class_names():
    names = imagenet_classes()
    assert len(names) == 1000 and len(set(names)) > 990
    assert names[0] == "tench" and names[1] == "goldfish" and names[999] == "toilet tissue"
    assert len(vistas_classes()) == 65 and vistas_classes()[0] == "Bird"
    assert class_colors("vistas")[0] == (165, 42, 42)
    assert class_names(None, 3) == ["class 0", "class 1", "class 2"]


def test_user_class_csv_and_its_errors(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("index,name\n1,dog\n0,cat\n")
    assert class_names(str(good), 2) == ["cat", "dog"]
    with pytest.raises(DataError, match="2 classes"):
        class_names(str(good), 3)
    for text in ("index,name\n0,cat\n2,dog\n", "id,label\n0,cat\n", "index,name\nzero,cat\n", ""):
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(DataError, match="bad.csv"):
            class_names(str(bad))
    with pytest.raises(DataError, match="no colours"):
        class_colors("imagenet")


def test_preprocessing_resizes_crops_and_normalises():
    transform = preprocessing_transform({"mean": MEAN, "std": STD, "resize": 256, "crop": 224})
    tensor = transform(Image.new("RGB", (300, 200), (255, 128, 0)))
    assert tensor.shape == (3, 224, 224)
    expected = [(value / 255 - mean) / std for value, mean, std in zip((255, 128, 0), MEAN, STD)]
    for channel, value in enumerate(expected):
        torch.testing.assert_close(tensor[channel], torch.full((224, 224), value), rtol=0, atol=1e-5)
    # the shorter side goes to 256 before the crop: a 224-wide stripe in the middle of a 512-wide image is all
    # that survives of its 2x downscale
    striped = Image.new("RGB", (512, 256), (0, 0, 0))
    striped.paste((255, 255, 255), (256 - 112, 0, 256 + 112, 256))
    assert transform(striped)[0, 100, 5:219].min() > 2.0


@pytest.fixture(scope="module")
def colour_model():
    """A resnet18 whose classifier is rigged so that uniform red, green and blue images give known classes."""
    torch.manual_seed(0)
    model = zoo.create_model("resnet18", num_classes=1000).eval()
    inputs = torch.stack([torch.stack([torch.full((32, 32), (value / 255 - mean) / std)
                                       for value, mean, std in zip(colour, MEAN, STD)]) for colour in ANSWERS])
    with torch.no_grad():
        features = model.forward_features(inputs).mean(dim=(2, 3))  # (3 colours, 512)
        rows = torch.linalg.pinv(features) @ (20.0 * torch.eye(len(ANSWERS)))  # features @ rows = 20 * I
        fc = model.get_classifier()
        fc.weight.zero_()
        fc.bias.zero_()
        for column, (index, _) in enumerate(ANSWERS.values()):
            fc.weight[index] = rows[:, column]
    return model


@pytest.fixture
def colour_images(tmp_path):
    paths = {
        "red": saved(tmp_path, "red.png", Image.new("RGB", (50, 40), (255, 0, 0))),
        "broken": tmp_path / "broken.jpg",
        "green": saved(tmp_path, "green.gif", palette_image((0, 255, 0), (40, 60))),
        "blue": saved(tmp_path, "blue.png", Image.new("RGBA", (45, 45), (0, 0, 255, 128))),
    }
    paths["broken"].write_bytes(b"\xff\xd8\xff\xe0 this is not the rest of a JPEG")
    return paths


@pytest.fixture
def published_colour_model(colour_model, loopback_server, tmp_path):
    path = write_imagenet_checkpoint(tmp_path / "colour.pth.tar", colour_model.state_dict())
    weights = publish(loopback_server, path, NAME, "resnet18", num_classes=1000, labels="imagenet",
                      preprocessing=SMALL)
    yield weights
    unregister_weights(NAME)


def test_predict_images_gives_the_known_classes(colour_model, colour_images):
    order = ["red", "broken", "green", "blue"]
    results = predict_images(colour_model, [colour_images[key] for key in order], names=imagenet_classes(),
                             preprocessing=SMALL, topk=3, batch_size=2)
    assert [r.ok for r in results] == [True, False, True, True]
    assert "broken.jpg" in results[1].error
    for result, colour in zip([results[0], results[2], results[3]], ANSWERS):
        top = result.classes
        assert (top[0].index, top[0].name) == ANSWERS[colour]
        # the rigged logits are exactly 20 for the answer and 0 elsewhere only if the preprocessing is right
        assert top[0].probability == pytest.approx(1 / (1 + 999 * math.exp(-20)), abs=5e-7)  # float32 softmax
        assert top[1].probability == pytest.approx(math.exp(-20), rel=1e-2)
        assert len(top) == 3 and top[0].probability >= top[1].probability >= top[2].probability


def test_cli_predict_json_reports_the_bad_image_and_goes_on(published_colour_model, colour_images, capsys):
    code = main(["predict", NAME, str(colour_images["red"]), str(colour_images["broken"]),
                 str(colour_images["green"]), "--topk", "2", "--json", "--no-progress"])
    captured = capsys.readouterr()
    assert code == exit_code(DataError)
    assert str(colour_images["broken"]) in captured.err
    results = json.loads(captured.out)
    assert [r["image"] for r in results] == [str(colour_images[k]) for k in ("red", "broken", "green")]
    assert results[1]["error"] and results[1]["predictions"] == []
    assert [p["name"] for p in results[0]["predictions"]][0] == "grey fox"
    assert results[2]["predictions"][0] == {**results[2]["predictions"][0], "rank": 1, "index": 1,
                                            "name": "goldfish"}
    assert len(results[0]["predictions"]) == 2


def test_cli_predict_rejects_bad_topk_and_segmentation_weights(capsys):
    assert main(["predict", "resnext101_ipabn_lr_512", "x.png", "--topk", "0"]) == 2
    assert main(["predict", "wider_resnet38_deeplab3_vistas", "x.png"]) == 2
    assert "segment" in capsys.readouterr().err


def test_predict_command_in_a_real_process(published_colour_model, colour_images, tmp_path):
    w = published_colour_model
    registry = tmp_path / "extra.toml"
    registry.write_text(
        f'[{NAME}]\narch = "resnet18"\narch_kwargs = {{ bn_mode = "inplace" }}\nurls = ["{w.urls[0]}"]\n'
        f'md5 = "{w.md5}"\nfile_name = "{w.file_name}"\ntask = "classification"\nnum_classes = 1000\n'
        f'labels = "imagenet"\nmetrics = {{ top1 = 50.0 }}\nlicense = "test only"\n'
        f'preprocessing = {{ mean = {list(MEAN)}, std = {list(STD)}, resize = 40, crop = 32 }}\n'
        f'description = "rigged colour classifier"\n')
    env = {**os.environ, "IABN_ZOO_REGISTRY": str(registry), "OMP_NUM_THREADS": "1"}
    result = forkserver.run([sys.executable, "-m", "iabn_zoo", "predict", NAME, str(colour_images["blue"]),
                             "--topk", "1", "--no-progress"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["image", "rank", "index", "name", "probability"]
    assert "999" in lines[1] and "toilet tissue" in lines[1]
    assert len(lines) == 2


def test_list_and_info_commands(published_colour_model, capsys):
    assert main(["list", "test_colour*", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    reference = zoo.create_model("resnet18")
    assert row["name"] == NAME and row["arch"] == "resnet18" and row["top1"] == 50.0
    assert row["params"] == sum(p.numel() for p in reference.parameters())
    assert row["size"] == published_colour_model.file_size and row["cached"] is False

    zoo.create_model(NAME, pretrained=True, progress=False)
    assert main(["list", "test_colour*"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["name", "arch", "weights", "params", "top1", "top5", "miou", "download", "cached"]
    assert table[1].split()[0] == NAME and table[1].split()[-1] == "yes"
    assert f"{published_colour_model.file_size / 2**20:.1f} MiB" in table[1]

    assert main(["list", "resnext*", "--pretrained", "--json"]) == 0
    names = [r["name"] for r in json.loads(capsys.readouterr().out)]
    assert "resnext101_ipabn_lr_512" in names and "resnext50" not in names

    assert main(["list", "wider_resnet38_deeplab3_vistas", "--json"]) == 0
    (vistas,) = json.loads(capsys.readouterr().out)
    assert vistas["miou"] == 53.42 and vistas["top1"] is None

    assert main(["info", "resnext101_ipabn_lr_512", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["md5"] == "3b7a221cbc076410eb12c8dd361b7e4e" and info["metrics"]["top1"] == 78.08
    assert info["preprocessing"]["crop"] == 224 and info["cached"] is False

    assert main(["info", "resnext101_ipabn_lr_51"]) == 3
    assert "resnext101_ipabn_lr_512" in capsys.readouterr().err
