"""`iabn-zoo finetune`, `evaluate` and `predict` as a user meets them (issue 15), in real processes on one small
fine-tuning run: bars at a terminal and silence in a pipe, one clean line per unreadable image (defect 9), TensorBoard
and curves.png (and a run without them), resume that refuses what cannot continue (defect 2), predict taking
whatever create_model takes (defect 4), the README's publishing line (defect 10), out of memory as exit 10."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys

import pytest
from PIL import Image
from support import forkserver
from support.cli import REPO, run_cli
from support.image_folders import write_colour_dataset

FAST = ["--batch-size", "6", "--image-size", "16", "--augment", "none", "--num-workers", "0"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def terminal_lines(text: str) -> list[str]:
    """What a terminal shows line by line, bar redraws (\\r) and escape codes removed."""
    return [ANSI.sub("", line.split("\r")[-1]).strip() for line in text.replace("\r\n", "\n").split("\n")]


@pytest.fixture(scope="module")
def colour_run(module_tmp):
    """resnet18 fine-tuned for two epochs on three colour classes at a terminal; one training file is not an image."""
    base = module_tmp("colour_run")
    data = write_colour_dataset(base / "data", train=12, val=3, size=16)
    (data / "train" / "red" / "zzz_not_an_image.png").write_bytes(b"just some bytes")
    run = base / "run"
    done = run_cli("finetune", "resnet18", data, "--out", run, "--epochs", "2", "--optimizer", "adamw", "--lr", "1e-3",
                   *FAST, env={"IABN_ZOO_HOME": str(base / "home")}, tty=True)
    assert done.returncode == 0, done.stderr
    return data, run, done


def test_finetune_draws_bars_at_a_terminal_and_one_clean_line_per_unreadable_image(colour_run):
    data, _, done = colour_run
    assert "epoch 1/2 train" in done.stderr and "epoch 2/2 val" in done.stderr
    problems = [line for line in terminal_lines(done.stderr) if "zzz_not_an_image" in line]
    bad = data / "train" / "red" / "zzz_not_an_image.png"
    assert problems == [f"iabn-zoo: warning: skipping unreadable image {bad} (UnidentifiedImageError: cannot "
                        f"identify image file '{bad}')"]
    assert not re.search(r"\.py:\d+|UserWarning|warnings\.warn", done.stderr)
    epochs = [line for line in done.stdout.splitlines() if line.startswith("epoch=")]
    assert len(epochs) == 2 and all("val_top5=-" in line for line in epochs)  # three classes: no top-5


def test_the_run_holds_tensorboard_scalars_and_curves(colour_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run, _ = colour_run
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/train", "loss/val", "top1/train", "top1/val", "learning_rate", "images_per_second"} <= tags
    assert "top5/val" not in tags
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("loss/val")] == [
        (m["epoch"], round(m["val_loss"], 4)) for m in metrics]
    assert all(m["val_top5"] is None for m in metrics)
    with Image.open(run / "curves.png") as curves:
        assert curves.format == "PNG" and curves.size == (1000, 400)


def test_without_the_logs_extra_fine_tuning_runs_and_says_once_what_it_skips(colour_run, tmp_path):
    data, _, _ = colour_run
    run = tmp_path / "run"
    done = run_cli("finetune", "resnet18", data, "--out", run, "--epochs", "2", *FAST,
                   block_imports=("tensorboard", "matplotlib"))
    assert done.returncode == 0, done.stderr
    skipped = [line for line in done.stderr.splitlines() if "training logs skipped" in line]
    assert skipped == [f"iabn-zoo: warning: training logs skipped: {run / 'tensorboard'} (no tensorboard) and "
                       f"{run / 'curves.png'} (no matplotlib); pip install 'iabn-zoo[logs]' to have them"]
    assert (run / "metrics.jsonl").exists() and not (run / "tensorboard").exists()
    assert not (run / "curves.png").exists()


def test_resume_refuses_what_cannot_continue_and_continues_the_rest(colour_run, tmp_path):
    data, run, _ = colour_run
    missing = run_cli("finetune", "resnet18", data, "--out", tmp_path / "never_ran", "--resume", *FAST)
    assert missing.returncode == 2 and not (tmp_path / "never_ran").exists()
    assert f"nothing to resume: {tmp_path / 'never_ran'} does not exist; drop --resume" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = run_cli("finetune", "resnet18", data, "--out", tmp_path / "empty", "--resume", *FAST)
    assert empty.returncode == 2 and "is not a fine-tuning run" in empty.stderr

    other = write_colour_dataset(tmp_path / "other", train=4, val=2, size=16,
                                 colours={"cyan": (0, 200, 200), "pink": (250, 120, 200)})
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = {path.name: path.read_bytes() for path in copy.iterdir() if path.is_file()}
    classes = run_cli("finetune", "resnet18", other, "--out", copy, "--resume", "--epochs", "3", *FAST)
    assert classes.returncode == 8, classes.stderr
    assert "its classes (cyan, pink) differ from the run's (blue, green, red)" in classes.stderr
    assert "Traceback" not in classes.stderr and "size mismatch" not in classes.stderr
    changed = run_cli("finetune", "resnet18", data, "--out", copy, "--resume", "--lr", "0.5", *FAST)
    assert changed.returncode == 2 and "--lr (run: 0.001)" in changed.stderr
    assert {path.name: path.read_bytes() for path in copy.iterdir() if path.is_file()} == before

    more = run_cli("finetune", "resnet18", data, "--out", copy, "--resume", "--epochs", "3", "--num-workers", "0")
    assert more.returncode == 0, more.stderr
    assert [json.loads(line)["epoch"] for line in (copy / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_predict_takes_a_run_and_an_architecture_without_weights_only_on_request(colour_run):
    data, run, _ = colour_run
    images = sorted((data / "val").rglob("*.png"))
    from_run = run_cli("predict", run, *images, "--topk", "1", "--batch-size", "2", "--json", tty=True)
    assert from_run.returncode == 0, from_run.stderr
    results = json.loads(from_run.stdout)
    assert [r["image"] for r in results] == [str(image) for image in images]
    assert {r["predictions"][0]["name"] for r in results} <= {"blue", "green", "red"}
    assert re.search(rf"predict: +\d+%\|.*\| *\d+/{len(images)}", from_run.stderr)  # the bar, in some state
    refused = run_cli("predict", "resnet18", images[0], "--topk", "2")  # the one no-weights rule: asked, refused
    assert refused.returncode == 2 and "architecture 'resnet18' has no published weights" in refused.stderr
    assert "--no-pretrained" in refused.stderr and refused.stdout == ""
    random = run_cli("predict", "resnet18", images[0], "--topk", "2", "--no-pretrained")
    assert random.returncode == 0, random.stderr
    assert len([line for line in random.stdout.splitlines() if "class " in line]) == 2
    not_a_run = run_cli("predict", data, images[0])
    assert not_a_run.returncode == 8 and "is not a fine-tuning run directory" in not_a_run.stderr


def test_evaluate_draws_a_bar_at_a_terminal_and_nothing_in_a_pipe(colour_run):
    data, run, _ = colour_run
    at_terminal = run_cli("evaluate", run, data, "--num-workers", "0", tty=True)
    assert at_terminal.returncode == 0 and re.search(r"evaluate: +\d+%\|.*\| *\d+/9", at_terminal.stderr)
    piped = run_cli("evaluate", run, data, "--num-workers", "0", "--json")
    assert piped.returncode == 0 and piped.stderr == ""
    scores = json.loads(piped.stdout)
    assert scores["images"] == 9 and scores["top5"] is None


def test_the_readme_publishing_line_runs_as_written(colour_run):
    """Defect 10: the README's `iabn_zoo.runs.run_weights(...)` raised AttributeError after `import iabn_zoo as zoo`."""
    _, run, _ = colour_run
    readme = " ".join((REPO / "README.md").read_text().split())
    line = re.search(r"`(zoo\.register_weights\(zoo\.run_weights\(.*?\)\))`", readme).group(1)
    code = ("import iabn_zoo as zoo\n" + line.replace('"runs/flowers"', repr(str(run)))
            + "\nweights = zoo.get_weights('flowers_rx101')\nprint(weights.arch, weights.num_classes, weights.urls[0])")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = forkserver.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["resnet18", "3", "https://your.server/flowers.safetensors"]


def test_out_of_memory_during_training_is_a_resource_limit(colour_run, tmp_path):
    data, _, _ = colour_run
    limit = 3 << 30
    probe = run_cli("list", "resnet18", memory_limit=limit)
    if probe.returncode != 0:
        pytest.skip(f"this torch build does not start within a {limit >> 30} GiB address space")
    done = run_cli("finetune", "resnet18", data, "--out", tmp_path / "run", "--epochs", "1", "--batch-size", "8",
                   "--image-size", "1024", "--augment", "none", "--num-workers", "0", memory_limit=limit)
    assert done.returncode == 10, done.stderr
    assert "out of memory while training at 1024 px with a batch of 8" in done.stderr
    assert "lower --image-size or --batch-size" in done.stderr and "Traceback" not in done.stderr


def test_a_worker_s_decode_failure_is_one_line_whether_skipped_or_fatal(colour_run, tmp_path):
    """An image that passes the scan but fails to decode inside a DataLoader worker: a warning line when skipped,
    an error line when fatal, never the worker's traceback."""
    data, run, _ = colour_run
    broken = shutil.copytree(data / "val", tmp_path / "val")
    Image.effect_noise((64, 64), 50).convert("RGB").save(tmp_path / "whole.jpg")  # its header survives the cut
    whole = (tmp_path / "whole.jpg").read_bytes()
    (broken / "red" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    skipped = run_cli("evaluate", run, broken, "--num-workers", "1")
    assert skipped.returncode == 0, skipped.stderr
    lines = [line for line in skipped.stderr.splitlines() if "truncated.jpg" in line]
    assert len(lines) == 1 and lines[0].startswith("iabn-zoo: warning: ") and \
        lines[0].endswith("the file is probably truncated or damaged. Another image takes its place.")
    fatal = run_cli("evaluate", run, broken, "--num-workers", "1", "--on-error", "raise")
    assert fatal.returncode == 8, fatal.stderr
    bad = broken / "red" / "truncated.jpg"
    assert re.fullmatch(rf"iabn-zoo: error: {re.escape(str(bad))}: the image cannot be decoded \(image file is "
                        r"truncated \(\d+ bytes not processed\)\); the file is probably truncated or damaged.\n",
                        fatal.stderr), fatal.stderr


def test_resuming_a_finished_run_or_on_other_data_says_so(colour_run, tmp_path):
    data, run, _ = colour_run
    copy = shutil.copytree(run, tmp_path / "run")
    before = {path.name: path.read_bytes() for path in copy.iterdir() if path.is_file()}
    finished = run_cli("finetune", "resnet18", data, "--out", copy, "--resume", "--num-workers", "0")
    assert finished.returncode == 0, finished.stderr
    assert f"{copy} is finished: it trained all 2 of its 2 epochs" in finished.stderr
    assert "--resume --epochs N with N > 2" in finished.stderr and "epoch=" not in finished.stdout
    assert {path.name: path.read_bytes() for path in copy.iterdir() if path.is_file()} == before

    moved = shutil.copytree(data, tmp_path / "moved_data")  # the same classes in another folder
    onward = run_cli("finetune", "resnet18", moved, "--out", copy, "--resume", "--epochs", "3", "--num-workers", "0")
    assert onward.returncode == 0, onward.stderr
    assert f"resuming {copy} on {moved}, not on {data} where its first 2 epoch(s) were trained" in onward.stderr
    assert json.loads((copy / "config.json").read_text())["config"]["epochs"] == 3


def test_a_batch_larger_than_the_training_set_says_what_it_trains_on(colour_run, tmp_path):
    data, _, _ = colour_run
    done = run_cli("finetune", "resnet18", data, "--out", tmp_path / "run", "--epochs", "1", "--batch-size", "64",
                   "--image-size", "16", "--augment", "none", "--num-workers", "0")
    assert done.returncode == 0, done.stderr
    assert "the batch size 64 is larger than the 36 training images each process sees" in done.stderr


def test_predict_takes_folders_recursively_in_sorted_order_and_counts_what_it_skips(colour_run, tmp_path):
    data, run, _ = colour_run
    (data / "val" / "notes.txt").write_text("not an image")
    try:
        done = run_cli("predict", run, data / "val", "--topk", "1", "--json")
    finally:
        (data / "val" / "notes.txt").unlink()
    assert done.returncode == 0, done.stderr
    assert [r["image"] for r in json.loads(done.stdout)] == [str(p) for p in sorted((data / "val").rglob("*.png"))]
    assert f"iabn-zoo: 1 file(s) in {data / 'val'} skipped: not images by their extension" in done.stderr
    missing = run_cli("predict", "resnet50", tmp_path / "nowhere.jpg", env={"IABN_ZOO_OFFLINE": "1"})
    assert missing.returncode == 8 and "nowhere.jpg does not exist" in missing.stderr  # before any weights


def test_evaluate_never_takes_split_folders_for_classes(tmp_path):
    (tmp_path / "data" / "train").mkdir(parents=True)
    (tmp_path / "data" / "val").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "data" / "val" / "loose.png")
    done = run_cli("evaluate", "resnet18", tmp_path / "data", "--no-pretrained", "--num-workers", "0")
    assert done.returncode == 8, done.stderr
    assert "holds the split folder(s) train, val" in done.stderr and "holds no class folders" in done.stderr
