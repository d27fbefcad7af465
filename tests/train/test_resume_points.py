"""Resume points inside an epoch and SIGTERM, in one process: a run stopped by SIGTERM during validation and again in
the middle of an epoch, each time continued by `resume="auto"`, ends with the bits of a run that never stopped (its
weights, its metrics but for their timings, and the draws its generators made at every step); the folder holds at
most two resume points; bad options are refused with errors that name them, before anything is written."""

import json
import os
import random
import shutil
import signal
from pathlib import Path

import numpy
import pytest
import torch
from support.image_folders import write_colour_dataset
from support.tiny_classifier import tiny_classifier_registered

from iabn_zoo import cli
from iabn_zoo.data.folders import ImageFolder
from iabn_zoo.errors import CheckpointError, InvalidArgumentError, RunPreempted
from iabn_zoo.system.tensor_files import read_safetensors
from iabn_zoo.train import loop
from iabn_zoo.train.finetune import finetune
from iabn_zoo.train.run_writer import load_resume_point
from iabn_zoo.train.step_boundary import SaveEvery, parse_save_every
from iabn_zoo.train.step_points import load_for_job
from iabn_zoo.weights.run_reader import read_metrics

MODEL = "tiny_classifier"
OPTIONS = dict(epochs=2, batch_size=4, image_size=16, augment="imagenet", num_workers=1, progress=False, lr=0.02,
               save_every=3)  # 24 images: 6 steps an epoch
TIMINGS = ("epoch_time_s", "images_per_s")


def tensor_files(run: Path) -> list[str]:
    return sorted(path.name for path in run.glob("resume-*.safetensors"))


def without_timings(records: list[dict]) -> list[dict]:
    return [{key: value for key, value in record.items() if key not in TIMINGS} for record in records]


@pytest.fixture(autouse=True)
def tiny_arch():
    with tiny_classifier_registered():
        yield


@pytest.fixture
def draws(monkeypatch, tmp_path):
    """Every optimizer step also draws from torch's, Python's and NumPy's generators (as dropout or a user's
    transform would) and records the draws by step, so that a resumed run can be compared with one that never
    stopped draw for draw; the data loader's workers write the seed torch gave them to `seeds.txt` (epoch, seed) for
    each training sample; `signal_at` sends this process SIGTERM right after the steps (or validations) named."""
    record: dict[int, tuple[float, float, float]] = {}
    signal_at = {"step": None, "validation": None}
    step_once, validate_once, load_once = loop.Trainer.optimize, loop.Trainer.validate, ImageFolder.__getitem__
    seeds = tmp_path / "seeds.txt"

    def load(self, index):
        worker = torch.utils.data.get_worker_info()
        if worker is not None and self.seed is not None:  # the training split
            with open(seeds, "a") as handle:
                handle.write(f"{self.epoch} {worker.seed}\n")
        return load_once(self, index)

    def optimize(self, *args):
        step_once(self, *args)
        record[self.step + 1] = (torch.rand(1).item(), random.random(), float(numpy.random.rand()))
        if signal_at["step"] == self.step + 1:
            os.kill(os.getpid(), signal.SIGTERM)

    def validate(self):
        if signal_at["validation"] == self.epoch + 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return validate_once(self)

    monkeypatch.setattr(loop.Trainer, "optimize", optimize)
    monkeypatch.setattr(loop.Trainer, "validate", validate)
    monkeypatch.setattr(ImageFolder, "__getitem__", load)
    return record, signal_at, seeds


def worker_seeds(seeds: Path) -> set[tuple[int, int]]:
    """The (epoch, worker seed) pairs the workers recorded, and forget them."""
    pairs = {tuple(map(int, line.split())) for line in seeds.read_text().splitlines()}
    seeds.unlink()
    return pairs


def test_sigterm_in_validation_and_mid_epoch_then_auto_resume_gives_the_uninterrupted_bits(tmp_path, draws):
    record, signal_at, seeds = draws
    data = write_colour_dataset(tmp_path / "data", train=8, val=2, size=16)
    whole = finetune(MODEL, data, tmp_path / "whole", **OPTIONS)
    whole_draws, whole_seeds = dict(record), worker_seeds(seeds)
    assert len(whole_seeds) == 2  # one worker, a seed of its own each epoch
    record.clear()
    run = tmp_path / "parts"
    previous = signal.getsignal(signal.SIGTERM)

    signal_at["validation"] = 1  # SIGTERM while epoch 1 validates: the epoch is saved, then the run stops
    with pytest.raises(RunPreempted, match=r"after epoch 1; the same command with resume auto continues it"):
        finetune(MODEL, data, run, resume="auto", **OPTIONS)
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is given back
    assert load_resume_point(run).position is None and tensor_files(run) == ["resume-epoch0001.safetensors"]

    signal_at.update(validation=None, step=8)  # then after step 8: the second of epoch 2
    with pytest.raises(RunPreempted, match=r"after step 8 \(2 of the 6 of epoch 2\)") as stopped:
        finetune(MODEL, data, run, resume="auto", **OPTIONS)
    assert (stopped.value.epoch, stopped.value.step) == (1, 8)
    point = json.loads((run / "resume.json").read_text())
    assert point["format"] == 2 and point["step"] == 8 and point["epoch_point"]["step"] == 6
    assert point["within_epoch"]["batches_done"] == 2 and point["within_epoch"]["world_size"] == 1
    assert tensor_files(run) == ["resume-epoch0001.safetensors", "resume-epoch0002-step00000008-w1.safetensors"]
    assert [r["epoch"] for r in read_metrics(run)] == [1]

    signal_at["step"] = None
    resumed = finetune(MODEL, data, run, resume="auto", **OPTIONS)  # a periodic point at step 9
    assert tensor_files(run) == ["resume-epoch0002.safetensors"]
    assert without_timings(resumed.metrics) == without_timings(whole.metrics)
    final_whole, final_parts = read_safetensors(whole.run_dir / "model.safetensors"), read_safetensors(
        run / "model.safetensors")
    assert final_whole.keys() == final_parts.keys()
    differing = [key for key in final_whole if not torch.equal(final_whole[key], final_parts[key])]
    assert not differing, f"weights differ from the uninterrupted run's: {differing[:5]}"
    # the three processes drew exactly what the uninterrupted one drew at the same steps, and the loader's workers
    # of the resumed epoch 2 got the seed they had in the uninterrupted run
    assert record == {step: whole_draws[step] for step in record} and set(record) == set(whole_draws)
    assert worker_seeds(seeds) == whole_seeds


def test_periodic_points_replace_each_other_and_a_job_of_another_size_falls_back_to_the_epoch(tmp_path, draws):
    record, signal_at, _ = draws
    data = write_colour_dataset(tmp_path / "data", train=8, val=2, size=16)
    run = tmp_path / "run"
    signal_at["step"] = 11  # points at steps 3 and 9 (6 ends epoch 1), then SIGTERM after 11
    with pytest.raises(RunPreempted):
        finetune(MODEL, data, run, **{**OPTIONS, "num_workers": 0})
    assert tensor_files(run) == ["resume-epoch0001.safetensors", "resume-epoch0002-step00000011-w1.safetensors"]
    with pytest.warns(UserWarning, match=r"written by 1 process\(es\), this job has 2: continuing from the end of "
                                         r"epoch 1 instead \(the 5 steps since are trained again\)"):
        fallback = load_for_job(run, world_size=2)
    assert (fallback.epoch, fallback.step, fallback.position) == (1, 6, None)
    assert load_for_job(run, world_size=1).step == 11

    first_epoch = tmp_path / "first_epoch"  # a point inside epoch 1 has no epoch to fall back to
    signal_at["step"] = 4
    with pytest.raises(RunPreempted):
        finetune(MODEL, data, first_epoch, **{**OPTIONS, "num_workers": 0})
    with pytest.raises(InvalidArgumentError, match=r"written by a job of 1 process\(es\) and this job has 2"):
        load_for_job(first_epoch, world_size=2)
    # the run's first point made the run: its description is there to resume from, and nothing else
    assert sorted(path.name for path in first_epoch.iterdir()) == [
        "classes.csv", "config.json", "resume-epoch0001-step00000004-w1.safetensors", "resume.json"]
    signal_at["step"] = None
    continued = finetune(MODEL, data, first_epoch, resume="auto", **{**OPTIONS, "num_workers": 0})
    assert [record["epoch"] for record in continued.metrics] == [1, 2]

    newer = tmp_path / "newer"  # a point of a later format is refused, not misread
    shutil.copytree(run, newer)
    document = json.loads((newer / "resume.json").read_text())
    (newer / "resume.json").write_text(json.dumps({**document, "format": 3}))
    with pytest.raises(CheckpointError, match="has format 3, this version reads 1 and 2"):
        finetune(MODEL, data, newer, resume="auto", **OPTIONS)


@pytest.mark.parametrize("value, expected", [
    (500, SaveEvery(steps=500)), ("500", SaveEvery(steps=500)), ("10min", SaveEvery(seconds=600.0)),
    ("0.5min", SaveEvery(seconds=30.0)), (0, SaveEvery()), ("0", SaveEvery()), (None, SaveEvery())])
def test_save_every_takes_steps_or_minutes(value, expected):
    assert parse_save_every(value) == expected


@pytest.mark.parametrize("value", [-1, "ten", "10 minutes", "0min", 2.5])
def test_bad_save_every_and_resume_values_are_refused_before_anything_is_written(tmp_path, capsys, value):
    data = write_colour_dataset(tmp_path / "data", train=2, val=1, size=8)
    with pytest.raises(InvalidArgumentError, match="save_every takes a number of optimizer steps"):
        finetune(MODEL, data, tmp_path / "run", save_every=value, epochs=1)
    assert cli.main(["finetune", MODEL, str(data), "--out", str(tmp_path / "run"), "--save-every", str(value),
                     "--no-progress"]) == 2
    assert "--save-every takes a number of optimizer steps (500), minutes of training (10min)" in \
        capsys.readouterr().err
    with pytest.raises(InvalidArgumentError, match="resume must be auto, yes or no"):
        finetune(MODEL, data, tmp_path / "run", resume="maybe", epochs=1)
    with pytest.raises(InvalidArgumentError, match="nothing to resume"):
        finetune(MODEL, data, tmp_path / "run", resume="yes", epochs=1)
    assert not (tmp_path / "run").exists()


def test_the_default_resume_is_auto_only_where_torchrun_may_restart_the_job(tmp_path, monkeypatch):
    from iabn_zoo.train.elastic import resume_wanted

    run = tmp_path / "run"
    run.mkdir()
    (run / "resume.json").write_text("{}")
    assert resume_wanted(None, run) is False and resume_wanted("auto", run) is True
    assert resume_wanted("auto", tmp_path / "empty") is False and resume_wanted(True, tmp_path / "empty") is True
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    assert resume_wanted(None, run) is True and resume_wanted(None, tmp_path / "empty") is False
    assert resume_wanted("no", run) is False
