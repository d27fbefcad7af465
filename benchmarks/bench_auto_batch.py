"""`finetune --batch-size auto` for segmentation networks: the batch it picks within one budget with InPlace-ABN over
the batch it picks with standard BatchNorm (target >= 1.8x), and the peak of three measured training steps at
InPlace-ABN's batch over the budget (target <= 1.0: the choice fits).

Each choice is the finetune code path itself (`train.fitting.fit_run`: the ledger, then real training steps
measured on the device, from below), for a run on a generated data set of 19 classes (Cityscapes' count), each
mode in a fresh process so that neither inherits the other's memory. The peak is the process's resident set on
the CPU (its peak, reset before the steps: all the process holds), CUDA's allocated bytes on a GPU.

Sizes: on a GPU (`IABN_BENCH_DEVICE=cuda`, benchmarks/gpu.sh) `deeplabv3_resnet50` at 256 px and the Vistas network
(`wider_resnet38_a2_deeplab3`) at 512 px within 16 GiB. On the CPU, `deeplabv3_resnet50` at 256 px within 3 GiB
(a 512-px training step of the Vistas network takes minutes on 2 CPUs, and the search measures several: its rows
need a GPU); quick: `deeplabv3_resnet18` at 128 px within 1.5 GiB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import bench_device, row

ROOT = Path(__file__).resolve().parents[1]
BATCH_TARGET = 1.8
PEAK_TARGET = 1.0
CLASSES = 19
GIB = 2 ** 30
CASES = {  # (quick, on a GPU) -> (network, crop side, budget)
    (True, False): [("deeplabv3_resnet18", 128, 1.5 * GIB)],
    (False, False): [("deeplabv3_resnet50", 256, 3 * GIB)],
    (True, True): [("deeplabv3_resnet50", 256, 16 * GIB)],
    (False, True): [("deeplabv3_resnet50", 256, 16 * GIB), ("wider_resnet38_a2_deeplab3", 512, 16 * GIB)],
}


def write_data(root: Path, images: int) -> Path:
    """`images` training and two validation pictures of 32 px with empty masks, classes.csv of CLASSES classes: a
    data set whose loader batches have the crop's size (pictures smaller than the crop are padded)."""
    from PIL import Image

    for split, count in (("train", images), ("val", 2)):
        for folder in ("images", "masks"):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            Image.new("RGB", (32, 32), (90, 120, 150)).save(root / split / "images" / f"{index:03d}.png")
            Image.new("L", (32, 32), index % CLASSES).save(root / split / "masks" / f"{index:03d}.png")
    (root / "classes.csv").write_text("index,name\n" + "".join(f"{i},class{i}\n" for i in range(CLASSES)))
    return root


def one_choice(name: str, side: int, budget: int, bn_mode: str, device: str, data: str) -> dict[str, Any]:
    """In this process: the batch `--batch-size auto` picks for a run of `name` in `bn_mode`, and for InPlace-ABN
    the peak of three measured steps at it."""
    import torch

    from iabn_zoo.train.auto_sizes import measured_peak
    from iabn_zoo.train.config import FinetuneConfig
    from iabn_zoo.train.fitting import fit_run
    from iabn_zoo.train.model import network_spec
    from iabn_zoo.train.processes import Processes
    from iabn_zoo.train.task import task_class

    options = {"backbone_weights": "none"} if name.startswith("deeplabv3_") else {}
    cfg = FinetuneConfig(name, data, os.path.join(data, "run"), batch_size="auto", image_size=side, epochs=1,
                         memory_budget=budget, bn_mode=bn_mode, num_workers=0, augment="none", device=device,
                         **options)
    procs = Processes(rank=0, world_size=1, device=torch.device(device))
    task = task_class(cfg.task)(cfg, procs)
    spec = network_spec(cfg, task)
    choice = fit_run(cfg, task, spec, procs)
    peak = (measured_peak(spec, cfg, task, procs.device, bn_mode, cfg.batch_size, (side, side), steps=3)
            if bn_mode == "inplace" else None)
    return {"batch": cfg.batch_size, "search_peak": choice.peak, "peak": peak, "line": choice.line()}


def choice_in_a_fresh_process(name: str, side: int, budget: int, bn_mode: str, device: str,
                              data: Path) -> dict[str, Any]:
    """`one_choice` in its own Python process."""
    code = ("import json, sys\nfrom benchmarks.bench_auto_batch import one_choice\n"
            f"print(json.dumps(one_choice({name!r}, {side}, {int(budget)}, {bn_mode!r}, {device!r}, {str(data)!r})))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise RuntimeError(f"{name} {bn_mode}: {done.stderr.strip().splitlines()[-1]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def rows_of(name: str, side: int, budget: int, device: str, data: Path) -> list[dict[str, Any]]:
    """The batch ratio row and the peak row of one network."""
    ours = choice_in_a_fresh_process(name, side, budget, "inplace", device, data)
    base = choice_in_a_fresh_process(name, side, budget, "standard", device, data)
    gib = budget / GIB
    return [
        row(f"auto batch {name} {side}px within {gib:g} GiB, inplace/standard", float(ours["batch"]),
            float(base["batch"]), target=BATCH_TARGET, unit="images", higher_is_better=True,
            note=f"{device}; measured steps from below (train.fitting); InPlace-ABN said: {ours['line']}; standard "
                 f"BN said: {base['line']}"),
        row(f"auto batch {name} {side}px: peak of 3 steps at batch {ours['batch']} / budget", ours["peak"] / 2 ** 20,
            budget / 2 ** 20, target=PEAK_TARGET, unit="MiB",
            note=f"{'CUDA allocated' if device.startswith('cuda') else 'resident set of the process'} over the "
                 f"{gib:g} GiB budget"),
    ]


def run(quick: bool) -> list[dict[str, Any]]:
    """The rows of each network the device can afford (see the module's description)."""
    device = bench_device()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="iz-bench-") as folder:
        data = write_data(Path(folder) / "data", images=96)
        for name, side, budget in CASES[quick, device.startswith("cuda")]:
            rows.extend(rows_of(name, side, int(budget), device, data))
    return rows
