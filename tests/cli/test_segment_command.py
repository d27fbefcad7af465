"""`iabn-zoo segment` end to end: a synthetic Vistas-format checkpoint from the registry, real image files, PNGs."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from support.cli import registry_file, run_cli
from support.segmentation_fixtures import TINY_WEIGHTS, served_tiny_vistas

from iabn_zoo.cli.main import main
from iabn_zoo.tasks.segment import SegmentationPredictor

FAST = ["--weights", TINY_WEIGHTS, "--scales", "1", "--no-progress"]


@pytest.fixture(scope="module")
def served(module_tmp):
    """The tiny Vistas weights registered and served for the whole module (each test downloads into its own cache)."""
    with served_tiny_vistas(module_tmp("served")) as weights:
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


def test_an_output_is_kept_only_when_it_is_the_kind_asked_for(served, photos, tmp_path, capsys):
    out = tmp_path / "out"
    street = str(photos / "street.jpg")
    assert main(["segment", street, "--out", str(out), *FAST]) == 0
    palette = (out / "street.png").read_bytes()
    capsys.readouterr()
    assert main(["segment", street, "--out", str(out), *FAST, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["status"].startswith("kept (a palette output")
    for other in (["--output", "overlay"], ["--output", "raw"], ["--output", "prob", "--prob-bits", "16"]):
        assert main(["segment", street, "--out", str(out), *FAST, *other]) == 2
        err = capsys.readouterr().err
        assert "street.png (palette)" in err and "--overwrite" in err
        assert (out / "street.png").read_bytes() == palette
    assert main(["segment", street, "--out", str(out), *FAST, "--output", "overlay", "--overwrite"]) == 0
    assert Image.open(out / "street.png").mode == "RGB" and Image.open(out / "street.png").width > 80
    assert not [path for path in out.iterdir() if path.name.startswith(".")]  # no temporary files left


def test_a_file_not_written_by_segment_is_never_kept_in_place_of_an_output(served, photos, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "street.png").write_bytes(b"precious")
    assert main(["segment", str(photos / "street.jpg"), "--out", str(out), *FAST]) == 2
    assert "not a segment output" in capsys.readouterr().err
    assert (out / "street.png").read_bytes() == b"precious"
    assert main(["segment", str(photos / "street.jpg"), "--out", str(out), *FAST, "--overwrite"]) == 0
    assert Image.open(out / "street.png").size == (80, 50)


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
    (["--scales", "1,,2"], 2, "--scales must be comma-separated numbers"),
    (["--scales", "1,2,"], 2, "--scales must be comma-separated numbers"),
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


def test_output_folder_blocked_by_a_file_is_a_storage_error(photos, tmp_path, capsys):
    blocker = tmp_path / "out"
    blocker.write_text("a file, not a folder")
    assert main(["segment", str(photos / "street.jpg"), "--out", str(blocker)]) == 11
    assert f"{blocker} is a file, not a folder; nothing was segmented" in capsys.readouterr().err
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


@pytest.fixture(scope="module")
def served_in_a_file(module_tmp):
    """The tiny Vistas weights served from loopback and named in a registry file, for CLI processes."""
    folder = module_tmp("served_in_a_file")
    with served_tiny_vistas(folder, name="tiny_vistas_in_a_process") as weights:
        yield weights, {"IABN_ZOO_REGISTRY": str(registry_file(folder, weights))}


def test_command_in_a_process_draws_bars_at_a_terminal_only(served_in_a_file, tmp_path):
    weights, env = served_in_a_file
    street_image((40, 30), 4).save(tmp_path / "one.png")
    street_image((30, 40), 5).save(tmp_path / "two.png")
    argv = ["segment", tmp_path / "one.png", tmp_path / "two.png", "--weights", weights.name, "--scales", "1"]
    home = {**env, "IABN_ZOO_HOME": str(tmp_path / "home")}
    at_terminal = run_cli(*argv, "--out", tmp_path / "a", env=home, plugins=True, tty=True)
    assert at_terminal.returncode == 0, at_terminal.stderr
    assert "segment" in at_terminal.stderr and "2/2" in at_terminal.stderr  # tqdm's bar over images
    piped = run_cli(*argv, "--out", tmp_path / "b", env=home, plugins=True)
    assert piped.returncode == 0 and piped.stderr == ""  # no bar, no warning, nothing
    quiet = run_cli(*argv, "--out", tmp_path / "c", "--no-progress", env=home, plugins=True, tty=True)
    assert quiet.returncode == 0 and "2/2" not in quiet.stderr
    assert Image.open(tmp_path / "a" / "one.png").size == (40, 30)


def test_outputs_of_another_kind_are_refused_in_a_process(served_in_a_file, tmp_path):
    """Defect 7: `--output overlay` after a palette run into the same folder used to keep the palette image."""
    weights, env = served_in_a_file
    street_image((40, 30), 4).save(tmp_path / "one.png")
    argv = ["segment", tmp_path / "one.png", "--out", tmp_path / "out", "--weights", weights.name, "--scales", "1"]
    env = {**env, "IABN_ZOO_HOME": str(tmp_path / "home")}
    assert run_cli(*argv, env=env, plugins=True).returncode == 0
    palette = (tmp_path / "out" / "one.png").read_bytes()
    overlay = run_cli(*argv, "--output", "overlay", env=env, plugins=True)
    assert overlay.returncode == 2, overlay.stderr
    assert "not overlay outputs" in overlay.stderr and "one.png (palette)" in overlay.stderr
    assert "--overwrite" in overlay.stderr and (tmp_path / "out" / "one.png").read_bytes() == palette
    replaced = run_cli(*argv, "--output", "overlay", "--overwrite", env=env, plugins=True)
    assert replaced.returncode == 0 and Image.open(tmp_path / "out" / "one.png").mode == "RGB"
    empty_scale = run_cli(*argv, "--scales", "1,,2", env=env, plugins=True)
    assert empty_scale.returncode == 2 and "--scales must be comma-separated numbers" in empty_scale.stderr


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_follow_the_umask(served_in_a_file, tmp_path, umask):
    """Defect 8: segment PNGs and the cached .safetensors copy were written 0600 whatever the umask."""
    weights, env = served_in_a_file
    street_image((40, 30), 4).save(tmp_path / "one.png")
    home = tmp_path / "home"
    done = run_cli("segment", tmp_path / "one.png", "--out", tmp_path / "out", "--weights", weights.name,
                   "--scales", "1", env={**env, "IABN_ZOO_HOME": str(home)}, plugins=True, umask=umask)
    assert done.returncode == 0, done.stderr
    expected = 0o666 & ~umask
    written = [tmp_path / "out" / "one.png", *home.glob("safetensors/*.safetensors"),
               *home.glob("checkpoints/*.tar")]
    assert len(written) == 3, written
    assert {path.name: oct(path.stat().st_mode & 0o777) for path in written} == \
        {path.name: oct(expected) for path in written}
