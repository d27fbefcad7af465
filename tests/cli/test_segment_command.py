"""`iabn-zoo segment` end to end: a synthetic Vistas-format checkpoint from the registry, real image files, PNGs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from support.segmentation_fixtures import TINY_WEIGHTS, served_tiny_vistas

import iabn_zoo as zoo
from iabn_zoo.cli.main import main
from iabn_zoo.tasks.segment import SegmentationPredictor

FAST = ["--weights", TINY_WEIGHTS, "--scales", "1", "--no-progress"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The tiny Vistas weights registered and served for the whole module (each test downloads into its own cache)."""
    with served_tiny_vistas(tmp_path_factory.mktemp("served")) as weights:
        yield weights


def street_image(size: tuple[int, int], seed: int) -> Image.Image:
    """A smooth random RGB picture, enough for the network to predict several classes."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 5, generator=generator)
    pixels = torch.nn.functional.interpolate(coarse, size=(size[1], size[0]), mode="bilinear")[0]
    data = (pixels.permute(1, 2, 0) * 255).to(torch.uint8).flatten().tolist()
    return Image.frombytes("RGB", size, bytes(data))


@pytest.fixture
def photos(tmp_path):
    """A folder with two photos of different sizes and a file that only pretends to be a JPEG."""
    folder = tmp_path / "photos"
    folder.mkdir()
    street_image((80, 50), 1).save(folder / "street.jpg", quality=95)
    street_image((45, 60), 2).save(folder / "alley.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_folder_is_segmented_and_unreadable_image_reported(served, photos, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["segment", str(photos), "--out", str(out), *FAST, "--json"])
    captured = capsys.readouterr()
    assert code == 8
    assert "broken.jpg" in captured.err
    rows = {row["input"].rsplit("/", 1)[-1]: row for row in json.loads(captured.out)}
    assert rows["broken.jpg"]["status"].startswith("skipped")
    assert rows["street.jpg"]["status"] == rows["alley.png"]["status"] == "written"
    assert sorted(path.name for path in out.iterdir()) == ["alley.png", "street.png"]
    for name, size in (("street", (80, 50)), ("alley", (45, 60))):
        image = Image.open(out / f"{name}.png")
        assert image.mode == "P" and image.size == size
        assert image.getpalette()[:6] == [165, 42, 42, 0, 192, 0]


def test_raw_output_equals_the_predictor(served, photos, tmp_path):
    out = tmp_path / "out"
    photo = photos / "street.jpg"
    options = ["--scales", "0.7,1", "--flip", "--fusion", "voting"]
    assert main(["segment", str(photo), "--out", str(out), "--output", "raw", *FAST[:2], *options,
                 "--no-progress"]) == 0
    image = Image.open(out / "street.png")
    assert image.mode == "L" and image.size == (80, 50)
    predictor = SegmentationPredictor.from_weights(TINY_WEIGHTS, progress=False, scales=(0.7, 1), flip=True,
                                                   fusion="voting")
    expected = predictor.predict(Image.open(photo).convert("RGB")).classes
    written = torch.tensor(list(image.tobytes())).view(50, 80)
    assert torch.equal(written, expected)
    assert expected.unique().numel() >= 2


@pytest.mark.parametrize("output, mode", [("prob", "L"), ("overlay", "RGB")])
def test_prob_and_overlay_are_written(served, photos, tmp_path, output, mode):
    out = tmp_path / "out"
    assert main(["segment", str(photos / "alley.png"), "--out", str(out), "--output", output, *FAST]) == 0
    image = Image.open(out / "alley.png")
    assert image.mode == mode
    if output == "prob":
        assert image.size == (45, 60)
    else:
        assert image.width > 45 and image.height >= 60  # photo plus legend panel


def test_existing_outputs_are_kept_unless_overwrite(served, photos, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "street.png").write_bytes(b"precious")
    assert main(["segment", str(photos / "street.jpg"), "--out", str(out), *FAST, "--json"]) == 0
    assert (out / "street.png").read_bytes() == b"precious"
    assert json.loads(capsys.readouterr().out)[0]["status"].startswith("kept")
    assert main(["segment", str(photos / "street.jpg"), "--out", str(out), *FAST, "--overwrite"]) == 0
    assert Image.open(out / "street.png").size == (80, 50)
    assert not [path for path in out.iterdir() if path.name.startswith(".")]  # no temporary files left


def test_long_side_option_sets_the_working_resolution(served, photos, tmp_path):
    out = tmp_path / "out"
    assert main(["segment", str(photos / "street.jpg"), "--out", str(out), *FAST, "--long-side", "40",
                 "--output", "raw"]) == 0
    written = torch.tensor(list(Image.open(out / "street.png").tobytes())).view(50, 80)
    photo = Image.open(photos / "street.jpg").convert("RGB")
    at = {side: SegmentationPredictor.from_weights(TINY_WEIGHTS, progress=False, long_side=side).predict(photo)
          for side in (40, 64)}
    assert torch.equal(written, at[40].classes)
    assert not torch.equal(written, at[64].classes)  # the registry's long side (64) gives another map


@pytest.mark.parametrize("argv, code, message", [
    (["--scales", "0"], 2, "scale"),
    (["--scales", "1,-2"], 2, "scale"),
    (["--scales", "one"], 2, "scales"),
    (["--long-side", "0"], 2, "long-side"),
    (["--device", "abacus"], 2, "device"),
])
def test_bad_options_give_clear_errors(served, photos, tmp_path, capsys, argv, code, message):
    out = tmp_path / "out"
    assert main(["segment", str(photos), "--out", str(out), "--weights", TINY_WEIGHTS, *argv]) == code
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_folder_is_a_data_error(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "no_such_folder"), "--out", str(out)]) == 8
    err = capsys.readouterr().err
    assert "no_such_folder" in err and "does not exist" in err
    assert not out.exists()


def test_output_folder_blocked_by_a_file_is_a_data_error(photos, tmp_path, capsys):
    blocker = tmp_path / "out"
    blocker.write_text("a file, not a folder")
    assert main(["segment", str(photos / "street.jpg"), "--out", str(blocker)]) == 8
    assert "cannot create the output folder" in capsys.readouterr().err
    assert blocker.read_text() == "a file, not a folder"


def test_folder_without_images_is_a_data_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("nothing to see")
    assert main(["segment", str(empty), "--out", str(tmp_path / "out")]) == 8
    assert "holds no images" in capsys.readouterr().err


def test_same_name_from_two_folders_is_refused(photos, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    street_image((20, 20), 3).save(other / "street.png")
    assert main(["segment", str(photos / "street.jpg"), str(other / "street.png"), "--out",
                 str(tmp_path / "out")]) == 8
    assert "different --out folders" in capsys.readouterr().err


def test_unknown_weights_name_suggests_close_ones(served, photos, tmp_path, capsys):
    assert main(["segment", str(photos), "--out", str(tmp_path / "out"), "--weights",
                 "wider_resnet38_deeplab3_vista"]) == 3
    assert "wider_resnet38_deeplab3_vistas" in capsys.readouterr().err


def test_command_runs_as_a_process_with_a_progress_bar(tmp_path):
    """`python -m iabn_zoo segment` in a fresh process: the tiny weights come from an IABN_ZOO_REGISTRY file."""
    with served_tiny_vistas(tmp_path, name="tiny_vistas_in_a_process") as weights:
        entry = {key: getattr(weights, key) for key in ("arch", "md5", "file_name", "num_classes", "task",
                                                        "license", "description", "labels")}
        registry = tmp_path / "extra.toml"
        registry.write_text(registry_toml(weights.name, entry, weights))
        street_image((40, 30), 4).save(tmp_path / "one.png")
        env = {**os.environ, "IABN_ZOO_REGISTRY": str(registry), "IABN_ZOO_HOME": str(tmp_path / "home"),
               "OMP_NUM_THREADS": "1"}
        completed = subprocess.run(
            [sys.executable, "-c", PLUGIN_RUNNER, "segment", str(tmp_path / "one.png"), "--out",
             str(tmp_path / "out"), "--weights", weights.name, "--scales", "1"],
            capture_output=True, text=True, env=env, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "segment" in completed.stderr and "1/1" in completed.stderr  # tqdm's bar over images
    assert Image.open(tmp_path / "out" / "one.png").size == (40, 30)


# The child process must know the test-only architecture: it imports the fixtures module, then runs the CLI.
PLUGIN_RUNNER = (
    f"import sys; sys.path.insert(0, {str(Path(__file__).parents[1])!r}); import support.segmentation_fixtures as fixtures; "
    "from iabn_zoo.cli.main import main\nwith fixtures.tiny_arch_registered(): sys.exit(main(sys.argv[1:]))"
)


def registry_toml(name: str, entry: dict, weights: zoo.Weights) -> str:
    """A registry file in the shipped schema for `weights`."""
    def value(item) -> str:
        if isinstance(item, str):
            return json.dumps(item)
        if isinstance(item, (list, tuple)):
            return "[" + ", ".join(value(v) for v in item) + "]"
        if isinstance(item, dict):
            return "{ " + ", ".join(f"{k} = {value(v)}" for k, v in item.items()) + " }"
        return json.dumps(item)

    fields = {**entry, "arch_kwargs": weights.arch_kwargs, "urls": list(weights.urls), "metrics": {},
              "preprocessing": weights.preprocessing}
    return f"[{name}]\n" + "".join(f"{key} = {value(item)}\n" for key, item in fields.items())
