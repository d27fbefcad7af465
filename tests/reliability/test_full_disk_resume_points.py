"""Resume points inside an epoch on a disk that fills up, for real (a small tmpfs, filled once epoch 1 is saved):
the periodic points of epoch 2 are warnings and training goes on; the point SIGTERM asks for cannot be skipped, so
the run stops with a StorageError that says which point it keeps (epoch 1's), and nothing partial is left."""

from __future__ import annotations

import json
import os
import signal

import pytest
from support.image_folders import write_colour_dataset
from support.tiny_classifier import tiny_classifier_registered

from iabn_zoo.cli.exit_codes import exit_code
from iabn_zoo.errors import StorageError
from iabn_zoo.train import loop
from iabn_zoo.train.finetune import finetune

LEFT_FREE = 64 << 10  # far less than a point of the tiny classifier with its headroom


def test_points_inside_an_epoch_on_a_full_disk(tmp_path, mounts, monkeypatch):
    data = write_colour_dataset(tmp_path / "data", train=8, val=2, size=16)  # 24 images, 6 steps of 4
    disk = mounts(tmp_path / "disk", "size=16m")
    run, filler = disk / "run", disk / "filler"
    save_once, step_once = loop.Trainer.save, loop.Trainer.optimize

    def save_then_fill(self):
        save_once(self)
        if self.epoch == 1:
            with open(filler, "wb") as handle:
                os.posix_fallocate(handle.fileno(), 0, os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
                                   - LEFT_FREE)

    def step_then_signal(self, *args):
        step_once(self, *args)
        if self.step + 1 == 11:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop.Trainer, "save", save_then_fill)
    monkeypatch.setattr(loop.Trainer, "optimize", step_then_signal)
    with tiny_classifier_registered(), pytest.warns(UserWarning) as warned, \
            pytest.raises(StorageError) as stopped:
        finetune("tiny_classifier", data, run, epochs=2, batch_size=4, image_size=16, augment="none",
                 num_workers=0, progress=False, save_every=4)
    lost = [str(w.message) for w in warned if "was not written" in str(w.message)]
    assert lost == [f"no space left on the device holding {run}: {lost[0].split(': ', 1)[1].split(';')[0]}; the "
                    "resume point at step 8 was not written; the run keeps epoch 1 as its resume point (`--resume` "
                    "continues from it); free some space there or move the run folder to a disk with room; "
                    "training goes on"]
    message = str(stopped.value)
    assert "the resume point at step 11 was not written; the run keeps epoch 1 as its resume point" in message
    assert exit_code(stopped.value) == 11
    assert json.loads((run / "resume.json").read_text())["epoch"] == 1
    assert sorted(path.name for path in run.iterdir() if path.is_file()) == [
        "classes.csv", "config.json", "curves.png", "metrics.jsonl", "model.safetensors",
        "resume-epoch0001.safetensors", "resume.json"], "a partial file of a point was left behind"
