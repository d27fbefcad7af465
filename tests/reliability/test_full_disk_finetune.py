"""Fine-tuning on a disk that fills up, for real: a small tmpfs holds the run, and once the first epoch is saved a
filler file takes the room the second epoch needs (as another program would). The run stops with exit code 11 and
a message that says what happened and what was kept; nothing of the second epoch is left (no partial file, no
metrics line, no TensorBoard point, config.json untouched); `--resume` after freeing the space ends with exactly the
weights and metrics of a run that never stopped. Both ways the disk can be found full are run: by the check before
the save (the usual case), and by the write itself (the check disabled in the child, so the real ENOSPC of the
safetensors writer is met). Both leave the run in the state asserted here, so the resumes that follow (refused
while the disk is full, then finishing) run once, after the usual case. Without the right to mount, the tests are
skipped and say why.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from support import forkserver
from support.image_folders import write_colour_dataset
from support.processes import PYTHON

from iabn_zoo.system.tensor_files import read_safetensors

OPTIONS = ["--epochs", "3", "--batch-size", "6", "--image-size", "16", "--augment", "none", "--num-workers", "0",
           "--no-progress", "--lr", "0.02", "--schedule", "step", "--step-epochs", "1"]
LEFT_FREE = 8 << 20  # what the filler leaves: far less than an epoch of resnet18 (about 130 MB)
# The child: the CLI, with the disk filled right after epoch 1 is saved (and, for "write", the room check disabled)
CHILD = """
import os, sys
import iabn_zoo.train.loop as loop
import iabn_zoo.train.run_writer as run_writer
from iabn_zoo.cli.main import main
filler, left, mode = os.environ["FILLER"], int(os.environ["LEFT_FREE"]), os.environ["FULL_BY"]
save = loop.Trainer.save
def save_then_fill(self):
    save(self)
    if self.epoch == 1:
        fd = os.open(filler, os.O_CREAT | os.O_WRONLY)
        os.posix_fallocate(fd, 0, os.statvfs(filler).f_bavail * os.statvfs(filler).f_frsize - left)
        os.close(fd)
        if mode == "write":
            run_writer.check_room_in = lambda *args, **kwargs: None
loop.Trainer.save = save_then_fill
sys.exit(main(sys.argv[1:]))
"""


def finetune_command(data: Path, run: Path, *extra: str) -> list[str]:
    return [PYTHON, "-m", "iabn_zoo", "finetune", "resnet18", str(data), "--out", str(run), *OPTIONS, *extra]


def run_files(run: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}


def tensorboard_epochs(run: Path) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return [event.step for event in events.Scalars("loss/val")]


@pytest.fixture(scope="module")
def uninterrupted(module_tmp):
    """The same fine-tuning, never stopped, on an ordinary disk: the data and the finished run."""
    base = module_tmp("uninterrupted")
    data = write_colour_dataset(base / "data", train=6, val=3, size=16)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = forkserver.run(finetune_command(data, base / "run"), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return data, base / "run"


@pytest.mark.parametrize("full_by", ["check", "write"])
def test_a_disk_full_in_the_second_epoch_keeps_the_first_and_resume_ends_as_if_never_stopped(
        uninterrupted, mounts, tmp_path, process_env, full_by):
    data, whole = uninterrupted
    disk = mounts(tmp_path / "disk", "size=320m")
    run, filler = disk / "run", disk / "filler"
    env = {**process_env(), "FILLER": str(filler), "LEFT_FREE": str(LEFT_FREE), "FULL_BY": full_by}
    stopped = forkserver.run([PYTHON, "-c", CHILD, *finetune_command(data, run)[3:]], env=env, capture_output=True,
                             text=True, timeout=300)

    assert stopped.returncode == 11, stopped.stderr
    assert f"no space left on the device holding {run}" in stopped.stderr
    assert "epoch 2 was not saved; the run keeps epoch 1 as its resume point" in stopped.stderr
    assert "internal error" not in stopped.stderr and "Traceback" not in stopped.stderr
    assert sorted(path.name for path in run.iterdir() if path.is_file()) == [
        "classes.csv", "config.json", "curves.png", "metrics.jsonl", "model.safetensors",
        "resume-epoch0001.safetensors", "resume.json"], "a partial file of epoch 2 was left behind"
    assert json.loads((run / "resume.json").read_text())["epoch"] == 1
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    assert tensorboard_epochs(run) == [1]
    saved = read_safetensors(run / "model.safetensors")
    kept = read_safetensors(run / "resume-epoch0001.safetensors")
    assert all(torch.equal(saved[key], kept["model." + key]) for key in saved)  # the weights are epoch 1's

    del saved, kept  # memory-mapped: the files they map would go on taking space on the small disk
    if full_by == "write":
        return  # the state the resumes start from is the one asserted above, as for "check"

    config = (run / "config.json").read_bytes()  # a resume that cannot continue leaves config.json as it was
    longer = forkserver.run(finetune_command(data, run, "--resume", "--epochs", "4"), env=process_env(),
                            capture_output=True, text=True, timeout=300)
    assert longer.returncode == 11 and "nothing was trained or written" in longer.stderr, longer.stderr
    assert (run / "config.json").read_bytes() == config
    filler.unlink()
    resumed = forkserver.run(finetune_command(data, run, "--resume"), env=process_env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    final, expected = read_safetensors(run / "model.safetensors"), read_safetensors(whole / "model.safetensors")
    assert final.keys() == expected.keys()
    differing = [key for key in final if not torch.equal(final[key], expected[key])]
    assert not differing, f"{len(differing)} tensors differ from the uninterrupted run's, e.g. {differing[:3]}"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    for key in ("epoch", "train_loss", "val_loss", "val_top1", "lr"):
        assert [m[key] for m in metrics] == [m[key] for m in reference], key
    assert tensorboard_epochs(run) == [1, 2, 3]
