"""What resume points inside an epoch cost, and how fast a run restarts from one (resnet18, 64 px, batch 8, CPU).

- `--save-every` at its default (10min): over one ten-minute interval a run pays one resume point (written by rank 0
  while the others wait in their next collective) and a check at every step boundary (a clock read, plus one
  all_reduce of two numbers under torchrun). Ours is 600 s of training plus the median time to write resnet18's
  point through `step_points.save_step_point` (weights, SGD momentum, generators: 94 MB, fsynced, then the commit
  of resume.json) plus the checks of the steps that fit in 600 s (the median check measured in a two-process gloo
  job, the median step of resnet18 measured here); the baseline is the 600 s alone. Target: at most 2% more. (Whole
  runs with and without points differ by less than this machine's noise, which is why the parts are measured.)
- Restart to the first resumed step: a new process continuing a run whose resume point lies at step 35 of 40
  (`--resume auto`), from its start to the end of its first optimizer step, against the same command starting a
  new run (interleaved, medians); the 35 batches trained before are skipped without being read. Target: at most
  1.25x.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from benchmarks.common import row

INTERVAL_S = 600.0  # the default --save-every, 10min
WRITE_TARGET = 1.02
RESTART_TARGET = 1.25
REPO = Path(__file__).resolve().parents[1]
# A child that runs the command line and reports when its first optimizer step ends (then exits at once), or sends
# itself SIGTERM after step STOP_AT (a run stopped there, with its resume point).
CHILD = """
import os, signal, sys, time
from iabn_zoo.train import loop
from iabn_zoo.cli.main import main
report, stop_at = os.environ.get("FIRST_STEP_FILE"), int(os.environ.get("STOP_AT", "0"))
step_once = loop.Trainer.optimize
def optimize(self, *args):
    step_once(self, *args)
    if report:
        with open(report, "w") as handle:
            handle.write(repr(time.time()))
        os._exit(0)
    if self.step + 1 == stop_at:
        os.kill(os.getpid(), signal.SIGTERM)
loop.Trainer.optimize = optimize
sys.exit(main(sys.argv[1:]))
"""
# Run by torchrun in two processes: the median time of a step boundary's check; rank 0 prints it.
CHECKS = """
import statistics, sys, time
import torch
from iabn_zoo.train.processes import process_group
from iabn_zoo.train.step_boundary import DEFAULT_SAVE_EVERY, StepBoundary
with process_group("cpu") as procs:
    boundary, times = StepBoundary(DEFAULT_SAVE_EVERY, procs), []
    for step in range(int(sys.argv[1])):
        start = time.perf_counter()
        boundary.after_step(step + 1, last_of_epoch=False)
        times.append(time.perf_counter() - start)
    if procs.rank == 0:
        print(statistics.median(times))
"""


def write_data(root: Path, per_class: int) -> Path:
    """Three flat-colour classes of 64-px images in train/ and val/."""
    for split, count in (("train", per_class), ("val", 2)):
        for name, colour in (("blue", (30, 40, 220)), ("green", (30, 200, 40)), ("red", (220, 30, 30))):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                Image.new("RGB", (64, 64), tuple((c + 7 * index) % 256 for c in colour)).save(folder / f"{index}.png")
    return root


def point_write_seconds(folder: Path, repeats: int) -> tuple[float, int]:
    """Median seconds to commit resnet18's resume point inside an epoch, and its bytes."""
    import iabn_zoo
    from iabn_zoo.train import rank_states
    from iabn_zoo.train.run_writer import ResumePoint
    from iabn_zoo.train.step_points import save_step_point

    model = iabn_zoo.create_model("resnet18", num_classes=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([0, 1])).backward()
    optimizer.step()
    rng, ranks = rank_states.encode([rank_states.capture(torch.device("cpu"))])
    times = []
    for step in range(1, repeats + 1):
        point = ResumePoint(epoch=0, step=step, model=model.state_dict(), optimizer=optimizer.state_dict(), scaler={},
                            rng=rng, ranks=ranks, position={"batches_done": step, "steps_per_epoch": 1000,
                                                            "world_size": 1, "elapsed_s": 0.0})
        start = time.perf_counter()
        save_step_point(folder, point, description={"classes": ["blue", "green", "red"]})
        times.append(time.perf_counter() - start)
    size = sum(path.stat().st_size for path in folder.glob("resume-*-step*.safetensors"))
    return statistics.median(times), size


def step_seconds(repeats: int) -> float:
    """Median seconds of a resnet18 training step at 64 px, batch 8."""
    import iabn_zoo

    model = iabn_zoo.create_model("resnet18", num_classes=3).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, labels = torch.randn(8, 3, 64, 64), torch.randint(0, 3, (8,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def check_seconds(folder: Path, calls: int) -> float:
    """Median seconds of one step boundary's check in a job of two processes (torchrun, gloo): the clock, the
    SIGTERM flag and the all_reduce that makes every rank agree."""
    script = folder / "checks.py"
    script.write_text(CHECKS)
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), str(calls)], env=environment, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-500:])
    return float(done.stdout.split()[-1])


def cli(folder: Path, *argv: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **env}
    return subprocess.run([sys.executable, "-c", CHILD, *argv], env=environment, capture_output=True, text=True,
                          cwd=folder, timeout=600)


def finetune_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["finetune", "resnet18", str(data), "--out", str(out), "--batch-size", "8", "--image-size", "64",
            "--augment", "light", "--no-progress", "--lr", "0.01", *extra]


def first_step_seconds(folder: Path, data: Path, out: Path, *extra: str) -> float:
    """Seconds from a new process's start to the end of its first optimizer step."""
    report = folder / "first_step.txt"
    report.unlink(missing_ok=True)
    start = time.time()
    done = cli(folder, *finetune_args(data, out, *extra), FIRST_STEP_FILE=str(report))
    if not report.exists():
        raise RuntimeError(f"the run made no step: {done.stderr[-500:]}")
    return float(report.read_text()) - start


def run(quick: bool) -> list[dict[str, Any]]:
    """The two rows (quick: fewer repeats and samples)."""
    repeats = 1 if quick else 5
    with tempfile.TemporaryDirectory(prefix="iabn_bench_resume_") as base:
        base = Path(base)
        data = write_data(base / "data", per_class=107)  # 321 images: 40 steps of 8
        (base / "points").mkdir()
        write_s, size = point_write_seconds(base / "points", 3 if quick else 7)
        step = step_seconds(5 if quick else 15)
        check = check_seconds(base, 100 if quick else 1000)
        steps = INTERVAL_S / step
        rows = [row("--save-every default (10min): 10 minutes of resnet18 training with its resume point and step "
                    "checks vs without", INTERVAL_S + write_s + steps * check, INTERVAL_S, target=WRITE_TARGET,
                    unit="s", note=f"point write {write_s:.2f} s ({size / 1e6:.0f} MB, median); step "
                                   f"{step * 1e3:.0f} ms (b8, 64 px); check {check * 1e6:.0f} us per step (2 "
                                   "processes, gloo)")]

        stopped = base / "stopped"
        prepared = cli(base, *finetune_args(data, stopped, "--epochs", "2", "--save-every", "0"), STOP_AT="35")
        if prepared.returncode != 75:
            raise RuntimeError(f"the run to resume did not stop on SIGTERM: {prepared.stderr[-500:]}")

        def resumed() -> float:
            copy = base / "resumed"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(stopped, copy)
            return first_step_seconds(base, data, copy, "--resume", "auto")

        def started() -> float:
            shutil.rmtree(base / "started", ignore_errors=True)
            return first_step_seconds(base, data, base / "started", "--epochs", "2")

        times: dict[str, list[float]] = {"resumed": [], "started": []}
        for index in range(repeats):  # interleaved, each side first in turn
            for name, start in (("resumed", resumed), ("started", started))[:: 1 if index % 2 == 0 else -1]:
                times[name].append(start())
        ours, baseline = statistics.median(times["resumed"]), statistics.median(times["started"])
        rows.append(row("restart to the first resumed step (resume point at step 35 of 40) vs a new run's first "
                        "step, resnet18", ours, baseline, target=RESTART_TARGET, unit="s",
                        note="new process each: imports, data scan, network, resume point, loader; 1 process"))
    return rows
