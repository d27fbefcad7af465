"""Writers of tiny, real segmentation data sets in the three layouts (folders, Cityscapes, Mapillary Vistas).

Each scene is a few rectangles of clearly separated colours on a background; the mask gives each pixel the class of
the colour drawn there, so a test can recover the mask from the image (alignment) and a network can learn it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = (48, 32)  # width, height
PALETTE = ((0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255))  # far apart: a blend of two is near none of them
FOLDER_CLASSES = ("background", "red", "green", "blue")
# A v1.2-style config of 5 labels: 4 evaluated (the classes), "unlabeled" not.
VISTAS_LABELS = (("animal--bird", "Bird", True), ("construction--barrier--curb", "Curb", True),
                 ("nature--sky", "Sky", True), ("object--vehicle--car", "Car", True),
                 ("void--unlabeled", "Unlabeled", False))
# Cityscapes label ids drawn in the test scenes: road (train id 0), car (13), and two without a train id.
CITYSCAPES_IDS = (7, 26, 9, 0)


def scene(seed: int, size: tuple[int, int] = SIZE, values: tuple[int, ...] = (0, 1, 2, 3)
          ) -> tuple[Image.Image, Image.Image]:
    """An RGB image of rectangles and its 'L' mask: pixels of PALETTE[k] hold values[k]."""
    rng = random.Random(seed)
    image = Image.new("RGB", size, PALETTE[0])
    mask = Image.new("L", size, values[0])
    draw_image, draw_mask = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    for _ in range(4):
        k = rng.randrange(1, len(PALETTE))
        left, top = rng.randrange(size[0] - 4), rng.randrange(size[1] - 4)
        box = (left, top, rng.randrange(left + 3, size[0]), rng.randrange(top + 3, size[1]))
        draw_image.rectangle(box, fill=PALETTE[k])
        draw_mask.rectangle(box, fill=values[k])
    return image, mask


def write_folders_data(root: Path, *, train: int = 3, val: int = 3, classes_csv: bool = True,
                       extension: str = ".png") -> Path:
    """root/{train,val}/{images,masks}/NNN and root/classes.csv (with a header); returns root."""
    for split, count in (("train", train), ("val", val)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image, mask = scene(index + (100 if split == "val" else 0))
            mask.putpixel((0, 0), 255)  # one ignored pixel per mask
            image.save(root / split / "images" / f"{index:03d}{extension}", quality=95)
            mask.save(root / split / "masks" / f"{index:03d}.png")
    if classes_csv:
        lines = ["index,name"] + [f"{index},{name}" for index, name in enumerate(FOLDER_CLASSES)]
        (root / "classes.csv").write_text("\n".join(lines) + "\n")
    return root


def write_cityscapes_data(root: Path, *, per_split: int = 2, city: str = "aachen") -> Path:
    """root/leftImg8bit/{train,val}/CITY/*_leftImg8bit.png with root/gtFine/.../*_gtFine_labelIds.png."""
    for split in ("train", "val"):
        for index in range(per_split):
            stem = f"{city}_{index:06d}_000019"
            image, mask = scene(index, values=CITYSCAPES_IDS)
            for folder, suffix, picture in (("leftImg8bit", "_leftImg8bit.png", image),
                                            ("gtFine", "_gtFine_labelIds.png", mask)):
                path = root / folder / split / city / (stem + suffix)
                path.parent.mkdir(parents=True, exist_ok=True)
                picture.save(path)
    return root


def vistas_config(labels=VISTAS_LABELS) -> dict:
    """A config.json document in the v1.2 format for `labels` ((name, readable, evaluate) triples)."""
    return {"labels": [{"name": name, "readable": readable, "color": [index * 40 % 256, 10, 20],
                        "instances": False, "evaluate": evaluate}
                       for index, (name, readable, evaluate) in enumerate(labels)]}


def palette_mask(mask: Image.Image) -> Image.Image:
    """`mask` as a palette PNG whose palette colours are NOT the indices (as Vistas' labels are)."""
    palette = []
    for index in range(256):
        palette += [index * 7 % 256, 255 - index, index * 3 % 256]
    indexed = Image.frombytes("P", mask.size, mask.tobytes())
    indexed.putpalette(palette)
    return indexed


def write_vistas_data(root: Path, *, per_split: int = 2, labels=VISTAS_LABELS) -> Path:
    """root/{training,validation}/{images/*.jpg,labels/*.png} and root/config.json; raw ids 0, 2, 3, 4 drawn."""
    for split in ("training", "validation"):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "labels").mkdir(parents=True, exist_ok=True)
        for index in range(per_split):
            image, mask = scene(index, values=(4, 0, 2, 3))
            image.save(root / split / "images" / f"key{index}.jpg", quality=95)
            palette_mask(mask).save(root / split / "labels" / f"key{index}.png")
    (root / "config.json").write_text(json.dumps(vistas_config(labels)))
    return root
