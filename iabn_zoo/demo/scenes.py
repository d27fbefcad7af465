"""Digit scenes: a small real-image segmentation data set, written offline from what ships with scikit-learn.

scikit-learn's real handwritten digits (1797 images of 8x8 gray levels) are upscaled to random sizes and pasted in
random colours at random positions onto random crops of its two real sample photographs (china.jpg, flower.jpg).
Every pixel gets a class: 0 for the photograph, d + 1 where digit d's strokes cover it, 255 (ignore) on the
anti-aliased border of a stroke, where the pixel is a blend of digit and photograph. The layout is the folders one
(`DATA/{train,val}/images/NAME.png`, `DATA/{train,val}/masks/NAME.png`, `DATA/classes.csv`).

Training scenes only use digits of the training part and validation scenes only digits of the held-out part (every
fifth image of each class, the split the demo's classification data set uses too), so a digit classifier
fine-tuned on the training part and then used as a segmentation backbone has never seen a validation digit.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import bad_argument
from ..train.run_writer import write_classes_csv

VAL_EVERY = 5  # every fifth image of each digit class is held out
MAX_GRAY = 16.0  # the digits' gray levels run 0..16
STROKE_ALPHA = 0.5  # a pixel at least this much digit is the digit's class ...
FAINT_ALPHA = 0.25  # ... one under this is not painted at all (it stays the photograph); between them: ignore
IGNORE_INDEX = 255
COLOUR_CANDIDATES = 8  # a digit's colour is the most contrasting of this many random colours
SPLITS = ("train", "val")
CLASS_NAMES = ["background"] + [f"digit {d}" for d in range(10)]


def digit_split(labels: Sequence[int]) -> list[str]:
    """"train" or "val" for each digit image: the VAL_EVERY-th image of each class (in order) is held out."""
    seen: dict[int, int] = {}
    splits = []
    for label in labels:
        index = seen.get(int(label), 0)
        seen[int(label)] = index + 1
        splits.append("val" if index % VAL_EVERY == VAL_EVERY - 1 else "train")
    return splits


def load_sources() -> tuple[dict[str, list[tuple[np.ndarray, int]]], list[np.ndarray]]:
    """scikit-learn's digits as {split: [(alpha 8x8 in 0..1, digit)]} and its sample photographs (uint8 RGB)."""
    try:
        from sklearn.datasets import load_digits, load_sample_images
    except ImportError:
        raise SystemExit("the demo needs scikit-learn: pip install 'iabn-zoo[demo]'") from None
    digits = load_digits()
    pools: dict[str, list[tuple[np.ndarray, int]]] = {split: [] for split in SPLITS}
    for pixels, label, split in zip(digits.images, digits.target, digit_split(digits.target)):
        pools[split].append(((pixels / MAX_GRAY).astype(np.float32), int(label)))
    return pools, list(load_sample_images().images)


def photo_crop(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random square crop of `photo` (side between `size` and the photo's short side) resized to `size`, as float."""
    height, width = photo.shape[:2]
    side = int(rng.integers(min(size, height, width), min(height, width) + 1))
    top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    crop = Image.fromarray(photo[top:top + side, left:left + side]).resize((size, size), Image.BILINEAR)
    return np.asarray(crop, dtype=np.float32)


def digit_alpha(digit: np.ndarray, side: int) -> np.ndarray:
    """The digit's coverage (in a one-pixel empty frame, so that it fades out inside its window) upscaled to `side`
    px, bilinear so that its borders are soft; faint values set to 0."""
    framed = np.pad(digit, 1)
    alpha = np.asarray(Image.fromarray(framed, mode="F").resize((side, side), Image.BILINEAR), dtype=np.float32)
    alpha = np.clip(alpha, 0.0, 1.0)
    alpha[alpha < FAINT_ALPHA] = 0.0
    return alpha


def stroke_pixels(alpha: np.ndarray) -> np.ndarray:
    """Where the digit is its class: mostly digit, and not on a hard edge (a neighbour left unpainted)."""
    unpainted = np.pad(alpha == 0, 1, constant_values=True)
    on_edge = unpainted[:-2, 1:-1] | unpainted[2:, 1:-1] | unpainted[1:-1, :-2] | unpainted[1:-1, 2:]
    return (alpha >= STROKE_ALPHA) & ~on_edge


def contrasting_colour(background: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Of a few random RGB colours, the one farthest from the mean colour of `background` (H, W, 3)."""
    candidates = rng.integers(0, 256, size=(COLOUR_CANDIDATES, 3)).astype(np.float32)
    distances = np.linalg.norm(candidates - background.reshape(-1, 3).mean(axis=0), axis=1)
    return candidates[int(np.argmax(distances))]


def paste(image: np.ndarray, mask: np.ndarray, alpha: np.ndarray, digit: int, colour: np.ndarray,
          top: int, left: int) -> None:
    """Blend `colour` into `image` with coverage `alpha` at (top, left) and label the covered pixels in `mask`."""
    side = alpha.shape[0]
    window = (slice(top, top + side), slice(left, left + side))
    image[window] = alpha[..., None] * colour + (1.0 - alpha[..., None]) * image[window]
    region = mask[window]
    region[alpha > 0] = IGNORE_INDEX
    region[stroke_pixels(alpha)] = digit + 1


def make_scene(pool: list[tuple[np.ndarray, int]], photos: list[np.ndarray], size: int,
               digits_per_scene: tuple[int, int], digit_scale: tuple[float, float],
               rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    """One scene: an RGB image and its "L" mask of class indices."""
    image = photo_crop(photos[int(rng.integers(len(photos)))], size, rng)
    mask = np.zeros((size, size), dtype=np.uint8)
    for _ in range(int(rng.integers(digits_per_scene[0], digits_per_scene[1] + 1))):
        pixels, digit = pool[int(rng.integers(len(pool)))]
        side = max(8, round(size * rng.uniform(*digit_scale)))
        top, left = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
        colour = contrasting_colour(image[top:top + side, left:left + side], rng)
        paste(image, mask, digit_alpha(pixels, side), digit, colour, top, left)
    return Image.fromarray(np.rint(image).astype(np.uint8), mode="RGB"), Image.fromarray(mask, mode="L")


def check_scene_arguments(train: int, val: int, size: int, digits_per_scene: tuple[int, int],
                          digit_scale: tuple[float, float]) -> None:
    """Typed errors, naming the argument, before anything is written."""
    for name, count in (("train", train), ("val", val)):
        if not isinstance(count, int) or count < 0:
            raise bad_argument(name, f"must be a number of scenes >= 0, got {count!r}")
    if not isinstance(size, int) or size < 16:
        raise bad_argument("size", f"must be an integer side >= 16 pixels, got {size!r}")
    low, high = digits_per_scene
    if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high):
        raise bad_argument("digits_per_scene", f"must be (low, high) with 1 <= low <= high, got {digits_per_scene!r}")
    smallest, largest = digit_scale
    if not 0 < smallest <= largest <= 1:
        raise bad_argument("digit_scale", f"must be (low, high) with 0 < low <= high <= 1 (fractions of the side), "
                                          f"got {digit_scale!r}")


def write_digit_scenes(root: str | os.PathLike[str], *, train: int = 500, val: int = 100, size: int = 64,
                       digits_per_scene: tuple[int, int] = (1, 2), digit_scale: tuple[float, float] = (0.5, 0.9),
                       seed: int = 0) -> dict[str, int]:
    """Write `train` and `val` digit scenes of `size` px under `root` in the folders layout; returns the scene count
    per split. The same arguments write the same files (each split draws from its own stream of `seed`)."""
    digits_per_scene, digit_scale = tuple(digits_per_scene), tuple(digit_scale)
    check_scene_arguments(train, val, size, digits_per_scene, digit_scale)
    pools, photos = load_sources()
    root = Path(root)
    counts = {"train": train, "val": val}
    for split_index, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, split_index])
        images, masks = root / split / "images", root / split / "masks"
        images.mkdir(parents=True, exist_ok=True)
        masks.mkdir(parents=True, exist_ok=True)
        for index in range(counts[split]):
            image, mask = make_scene(pools[split], photos, size, digits_per_scene, digit_scale, rng)
            image.save(images / f"{index:05d}.png")
            mask.save(masks / f"{index:05d}.png")
    write_classes_csv(root, CLASS_NAMES)
    return counts
