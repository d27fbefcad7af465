"""Data pipeline of fine-tuning: the cost of seeding every sample's augmentation (what makes `--resume` exact).

Ours: an ImageFolder whose random transforms draw from a generator seeded by (seed, epoch, index) per sample.
Baseline: the same folder and transforms drawing from the global generator. Target: at most 10% slower.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from benchmarks.common import interleaved_medians, row
from iabn_zoo.data.folders import ImageFolder
from iabn_zoo.data.transforms import train_transform

IMAGE_SIZE = 64
CROP = 32
TARGET_RATIO = 1.10


def write_folder(root: Path, per_class: int) -> None:
    """Two classes of noisy RGB images."""
    rng = random.Random(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = bytes(rng.randrange(256) for _ in range(IMAGE_SIZE * IMAGE_SIZE * 3))
            Image.frombytes("RGB", (IMAGE_SIZE, IMAGE_SIZE), pixels).save(root / name / f"{index}.png")


def pass_over(dataset: ImageFolder) -> None:
    for index in range(len(dataset)):
        dataset[index]


def run(quick: bool) -> list[dict[str, Any]]:
    """One row: seconds per pass over the folder with per-sample seeding vs without."""
    torch.set_num_threads(1)
    per_class, repeats = (32, 5) if quick else (128, 9)
    with tempfile.TemporaryDirectory() as tmp:
        write_folder(Path(tmp), per_class)
        transform = train_transform(CROP, "imagenet")
        seeded = ImageFolder(tmp, transform, seed=0)
        unseeded = ImageFolder(tmp, transform)
        ours, baseline = interleaved_medians(lambda: pass_over(seeded), lambda: pass_over(unseeded), repeats)
    return [row(f"data: seeded augmentation, {2 * per_class} images {IMAGE_SIZE}px -> {CROP}px", ours, baseline,
                target=TARGET_RATIO, unit="s/pass", note="per-sample generator seeding vs global generator")]
