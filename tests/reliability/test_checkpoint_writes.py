"""Fine-tuning runs SIGKILLed while they save an epoch: the previous checkpoint stays loadable, --resume works.

The run directory's writes go through temporary names (`.NAME.PID.RANDOM.tmp`) that are renamed into place once all
are written, the tensor file first and `resume.json` (the commit point) next. Each process is stopped by its own
audit hook (support.pause_points) just before one of those renames and killed there: once with every temporary of
an epoch written and none in place, once with the new tensor file in place but `resume.json` not yet. The killed
run is resumed by a new process, and a third process finishes the run.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from support import forkserver
from support.image_folders import write_colour_dataset
from support.pause_points import kill_at_pause, start_paused
from support.processes import PYTHON

from iabn_zoo.factory import load_run
from iabn_zoo.system.tensor_files import read_safetensors
from iabn_zoo.train.run_writer import load_resume_point
from iabn_zoo.weights.run_reader import read_metrics

FINETUNE = ["--batch-size", "6", "--image-size", "16", "--augment", "none", "--num-workers", "0", "--no-progress",
            "--lr", "0.01"]


def temporaries(run: Path, process: subprocess.Popen) -> list[str]:
    """The files `process` left half-written in `run`, by the name they were to take (`.NAME.PID.RANDOM.tmp`)."""
    return sorted(path.name[1:].rsplit(".", 3)[0] for path in run.glob(f".*.{process.pid}.*.tmp"))


def assert_loadable(run: Path) -> int:
    """The committed checkpoint, its tensor file, the latest weights and the metrics agree and load."""
    state = load_resume_point(run)
    assert state.epoch >= 1 and state.model
    assert [record["epoch"] for record in read_metrics(run)][: state.epoch] == list(range(1, state.epoch + 1))
    weights = read_safetensors(run / "model.safetensors")
    assert weights.keys() == state.model.keys()
    assert load_run(run).classes == ["blue", "green", "red"]
    return state.epoch


def test_checkpoint_writes_killed_mid_write_keep_the_previous_one(tmp_path, process_env):
    data = write_colour_dataset(tmp_path / "data", train=6, val=2, size=16)
    run = tmp_path / "run"
    env = process_env()
    start = ["finetune", "resnet18", str(data), "--out", str(run)]
    # epoch 2 staged: all its temporaries written, none renamed; epoch 1 is the resume point
    first = start_paused(".resume-epoch0002", start + ["--epochs", "30", *FINETUNE], env)
    kill_at_pause(first, "epoch 2 staged")
    epoch_files = ["classes.csv", "config.json", "metrics.jsonl", "model.safetensors", "resume-epoch0002.safetensors", "resume.json"]
    assert temporaries(run, first) == epoch_files, "killed with the whole epoch staged"
    assert assert_loadable(run) == 1
    # resumed, epoch 2 again: its tensor file renamed into place, resume.json (the commit point) not yet
    second = start_paused(".resume.json", start + ["--resume"], env)
    kill_at_pause(second, "epoch 2 about to commit")
    assert (run / "resume-epoch0002.safetensors").exists()
    assert temporaries(run, second) == ["classes.csv", "config.json", "metrics.jsonl", "model.safetensors", "resume.json"]
    assert assert_loadable(run) == 1

    final = forkserver.run([PYTHON, "-m", "iabn_zoo", *start, "--resume", "--epochs", "2"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert assert_loadable(run) == 2
    assert [record["epoch"] for record in read_metrics(run)] == [1, 2]
    assert sorted(path.name for path in run.glob("resume-epoch*")) == ["resume-epoch0002.safetensors"]
