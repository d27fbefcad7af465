"""Writers of small, real image folders in the ImageFolder layout for the data, fine-tuning and evaluation tests."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image

# Clearly separated colours: a network learns them in a few steps, so accuracy far above chance is expected.
COLOURS = {"blue": (30, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}


def noisy_colour_image(colour: tuple[int, int, int], size: int, rng: random.Random) -> Image.Image:
    """A `size` x `size` image of `colour` with a per-image tint and a few random pixels."""
    tint = tuple(max(0, min(255, value + rng.randint(-40, 40))) for value in colour)
    image = Image.new("RGB", (size, size), tint)
    for _ in range(size):
        image.putpixel((rng.randrange(size), rng.randrange(size)), tuple(rng.randrange(256) for _ in range(3)))
    return image


def write_colour_split(root: Path, per_class: int, *, size: int = 20, seed: int = 0,
                       colours: dict[str, tuple[int, int, int]] = COLOURS) -> Path:
    """root/CLASS/NNN.png for every colour class; returns root."""
    rng = random.Random(seed)
    for name, colour in colours.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            noisy_colour_image(colour, size, rng).save(folder / f"{index:03d}.png")
    return root


def write_colour_dataset(data_dir: Path, *, train: int = 16, val: int = 6, size: int = 20,
                         colours: dict[str, tuple[int, int, int]] = COLOURS) -> Path:
    """data_dir/train and data_dir/val with the same colour classes (different images); returns data_dir."""
    write_colour_split(data_dir / "train", train, size=size, seed=1, colours=colours)
    write_colour_split(data_dir / "val", val, size=size, seed=2, colours=colours)
    return data_dir
