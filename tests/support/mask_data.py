"""A small segmentation data set in the folders layout, for training tests: coloured squares on plain grounds,
each square's class its colour (background 0), written as PNG images and single-channel masks with classes.csv."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = ((220, 40, 40), (40, 200, 40), (40, 40, 220))
CLASSES = ("background", "red", "green", "blue")


def write_square_scenes(root: Path, *, train: int = 16, val: int = 4, size: int = 32, seed: int = 0) -> Path:
    """`train` and `val` scenes of `size` px with two squares each; returns `root`."""
    rng = random.Random(seed)
    for split, count in (("train", train), ("val", val)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image = Image.new("RGB", (size, size), tuple(rng.randrange(60, 120) for _ in range(3)))
            mask = Image.new("L", (size, size), 0)
            for _ in range(2):
                colour = rng.randrange(len(COLOURS))
                side = rng.randrange(size // 3, size // 2)
                left, top = rng.randrange(size - side), rng.randrange(size - side)
                box = [left, top, left + side - 1, top + side - 1]
                ImageDraw.Draw(image).rectangle(box, fill=COLOURS[colour])
                ImageDraw.Draw(mask).rectangle(box, fill=colour + 1)
            image.save(root / split / "images" / f"{index:03d}.png")
            mask.save(root / split / "masks" / f"{index:03d}.png")
    (root / "classes.csv").write_text("index,name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(CLASSES)))
    return root
