"""The segmentation commands as a user runs them (fresh processes, real files): finetune of a segmentation network,
its bad options (exit 2) and bad masks (exit 8) refused before --out exists, then the run as a model: evaluate (the
same confusion matrix as training's validation), segment --weights RUN (the run's classes, palette, long side),
the same class maps from segment and evaluate by default (the run's recommended test-time passes), export RUN."""

import json

import pytest
from PIL import Image
from support.cli import run_cli
from support.mask_data import CLASSES, write_square_scenes

from iabn_zoo.tasks.palette import generated_palette
from iabn_zoo.weights.run_reader import read_metrics

MODEL = "tiny_vistas_deeplab3"
FAST = ("--epochs", "2", "--batch-size", "4", "--image-size", "32", "--num-workers", "0", "--optimizer", "adamw",
        "--lr", "0.01", "--augment", "none")


@pytest.fixture(scope="module")
def data(module_tmp):
    return write_square_scenes(module_tmp("squares") / "data", train=12, val=4)


@pytest.fixture(scope="module")
def run_dir(data, module_tmp):
    run = module_tmp("cli") / "run"
    done = run_cli("finetune", MODEL, data, "--out", run, *FAST, plugins=True)
    assert done.returncode == 0, done.stderr
    assert "val_miou=" in done.stdout and "val_top1" not in done.stdout
    return run


def test_evaluate_of_a_run_gives_the_scores_of_its_last_validation(run_dir, data):
    done = run_cli("evaluate", run_dir, data, "--json", plugins=True)
    assert done.returncode == 0, done.stderr
    scores = json.loads(done.stdout)
    last = read_metrics(run_dir)[-1]
    assert scores["images"] == 4 and list(scores["per_class_iou"]) == list(CLASSES)
    assert scores["miou"] == pytest.approx(last["val_miou"], abs=1e-9), "evaluate and training validation differ"
    assert scores["pixel_accuracy"] == pytest.approx(last["val_pixel_accuracy"], abs=1e-9)
    flipped = run_cli("evaluate", run_dir, data / "val", "--scales", "0.75,1", "--flip", "--json", plugins=True)
    assert flipped.returncode == 0, flipped.stderr
    assert json.loads(flipped.stdout)["scales"] == [0.75, 1.0]


def test_segment_with_a_run_uses_its_classes_palette_and_size(run_dir, data, tmp_path):
    done = run_cli("segment", "--weights", run_dir, data / "val" / "images", "--out", tmp_path / "out", "--scales",
                   "1", "--json", plugins=True)
    assert done.returncode == 0, done.stderr
    outputs = sorted((tmp_path / "out").iterdir())
    assert len(outputs) == 4
    with Image.open(outputs[0]) as picture:
        assert picture.size == (32, 32) and picture.mode == "P"
        colours = picture.getpalette()[:3 * len(CLASSES)]
    assert colours == [c for colour in generated_palette(len(CLASSES)) for c in colour]


def test_export_of_a_run(run_dir, tmp_path):
    done = run_cli("export", run_dir, "--out", tmp_path / "net.onnx", "--image-size", "32", plugins=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "net.onnx").stat().st_size > 0


@pytest.mark.parametrize("option", [
    ("--loss", "focal"), ("--output-stride", "4"), ("--scale-range", "2"), ("--image-size", "32,x"),
    ("--class-weights", "1,a"), ("--task", "detection"), ("--ohem-threshold", "2", "--loss", "ohem"),
    ("--scale-range", "2,0.5"), ("--augment", "imagenet"), ("--ignore-index", "2"),
])
def test_bad_options_exit_2_and_write_nothing(data, tmp_path, option):
    done = run_cli("finetune", MODEL, data, "--out", tmp_path / "run", *FAST, *option, plugins=True)
    assert done.returncode == 2, done.stderr
    assert not (tmp_path / "run").exists()


def test_a_bad_mask_exits_8_naming_it_before_out_is_created(data, tmp_path):
    broken = write_square_scenes(tmp_path / "broken", train=4, val=2)
    bad = broken / "train" / "masks" / "001.png"
    Image.new("L", (32, 32), 9).save(bad)  # 9 >= the 4 classes and not the ignore index
    done = run_cli("finetune", MODEL, broken, "--out", tmp_path / "run", *FAST, plugins=True)
    assert done.returncode == 8, done.stderr
    assert "001.png" in done.stderr
    assert not (tmp_path / "run").exists()


def class_maps_scores(outputs, masks_folder, classes: int):
    """Per-class IoU and pixel accuracy of `segment --output raw` class maps against the masks they segment."""
    from iabn_zoo.data.masks import mask_tensor
    from iabn_zoo.tasks.confusion import ConfusionMatrix

    confusion = ConfusionMatrix(classes)
    for output in outputs:
        with Image.open(output) as predicted, Image.open(masks_folder / output.name) as truth:
            confusion.update(mask_tensor(predicted).long(), mask_tensor(truth))
    return confusion.scores()


def test_segment_and_evaluate_give_the_same_class_maps_by_default(run_dir, data, tmp_path):
    """Both take the run's recommended test-time passes (scale 1, no flip, its long side): segment's class maps
    scored here equal evaluate's scores exactly; other passes (a flip) give other maps."""
    scores = {}
    for name, passes in (("default", ()), ("flipped", ("--flip",))):
        segmented = run_cli("segment", "--weights", run_dir, data / "val" / "images", "--out", tmp_path / name,
                            "--output", "raw", *passes, plugins=True)
        assert segmented.returncode == 0, segmented.stderr
        scores[name] = class_maps_scores(sorted((tmp_path / name).iterdir()), data / "val" / "masks", len(CLASSES))
    evaluated = run_cli("evaluate", run_dir, data, "--json", plugins=True)
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert (report["scales"], report["flip"], report["long_side"]) == ([1.0], False, 32)
    assert list(report["per_class_iou"].values()) == scores["default"]["per_class_iou"]
    assert report["pixel_accuracy"] == scores["default"]["pixel_accuracy"]
    assert scores["flipped"] != scores["default"], "a flipped pass changed nothing: the comparison cannot fail"


def test_info_says_the_recommended_test_time_passes(run_dir):
    run = run_cli("info", run_dir, "--json", plugins=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["test_time"] == "scales 1, long side 32"
    vistas = run_cli("info", "wider_resnet38_deeplab3_vistas")
    assert vistas.returncode == 0, vistas.stderr
    assert "test_time: scales 1 + flip, long side 2048" in " ".join(vistas.stdout.split())
