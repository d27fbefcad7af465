"""Fine-tuning runs SIGKILLed while they write a checkpoint: the previous checkpoint stays loadable, --resume works.

The run directory's writes go through temporary names (`.NAME.PID.RANDOM.tmp`), so the test watches for one to appear
after the first checkpoint is committed and kills the process then, at a few offsets; a temporary file left behind
proves that the kill landed mid-write. The killed run is resumed by a new process, which is killed mid-write in
turn, and a third process finishes the run.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from support.image_folders import write_colour_dataset
from support.processes import PYTHON, wait_for

from iabn_zoo.factory import load_run
from iabn_zoo.system.tensor_files import read_safetensors
from iabn_zoo.train.run_writer import load_resume_point
from iabn_zoo.weights.run_reader import read_metrics

FINETUNE = ["--batch-size", "6", "--image-size", "16", "--augment", "none", "--num-workers", "0", "--no-progress",
            "--lr", "0.01"]


def temporaries(run: Path) -> list[str]:
    return sorted(path.name for path in run.glob(".*.tmp"))


def kill_mid_write(process: subprocess.Popen, run: Path, prefix: str, offset: float) -> list[str]:
    """SIGKILL `process` `offset` seconds after a new temporary `prefix...` file appears in `run` once a checkpoint
    is committed; returns the new temporaries the kill left behind (none: the write had finished)."""
    stale = set(temporaries(run))

    def writing() -> bool:
        fresh = [name for name in temporaries(run) if name.startswith(prefix) and name not in stale]
        return bool(fresh) and (run / "resume.json").exists()

    try:
        wait_for(lambda: process.poll() is not None or writing(), 180, f"a write of {prefix}*", interval=0.001)
        assert process.poll() is None, process.communicate()[1]
        time.sleep(offset)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    return [name for name in temporaries(run) if name not in stale]


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
    start = [PYTHON, "-m", "iabn_zoo", "finetune", "resnet18", str(data), "--out", str(run)]
    landed = []
    first = subprocess.Popen(start + ["--epochs", "30", *FINETUNE], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    landed.append(kill_mid_write(first, run, ".resume-epoch", 0.0))
    epoch = assert_loadable(run)

    second = subprocess.Popen(start + ["--resume"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    landed.append(kill_mid_write(second, run, ".model.safetensors", 0.002))
    resumed_epoch = assert_loadable(run)
    assert resumed_epoch >= epoch

    final = subprocess.run(start + ["--resume", "--epochs", str(resumed_epoch + 1)], env=env, capture_output=True,
                           text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert assert_loadable(run) == resumed_epoch + 1
    assert [record["epoch"] for record in read_metrics(run)] == list(range(1, resumed_epoch + 2))
    assert any(landed), f"no kill landed during a write: {landed}"
