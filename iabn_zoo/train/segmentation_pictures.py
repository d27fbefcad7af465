"""What a segmentation run shows of its validation: for the first few validation images (rank 0's), the photo beside
its predicted and its true masks in the class colours (TensorBoard, every epoch), and RUN/samples/ with the
prediction and the truth blended on the photo, with a legend of the classes present (the last epoch's, written
atomically; ignored pixels are white)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..system.files import atomic_path
from ..tasks.palette import Color, class_palette
from ..tasks.render import colored_map, overlay_image

PICTURES = 4  # validation images shown per epoch
SAMPLES_DIR = "samples"
IGNORED_COLOUR = (255, 255, 255)


@dataclass(frozen=True)
class ValidationPicture:
    """One validation image (normalised, (3, H, W)), its predicted and its true class maps ((H, W))."""

    image: torch.Tensor
    predicted: torch.Tensor
    target: torch.Tensor


def photo(image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
          std: Sequence[float] = IMAGENET_STD) -> Image.Image:
    """The RGB photo of a normalised image."""
    pixels = image * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    pixels = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    return Image.fromarray(pixels.numpy(), "RGB")


def mask_colours(classes: Sequence[str], ignore_index: int) -> tuple[list[Color], list[str]]:
    """Colours and names indexed by mask value: the classes', then white for the ignore index."""
    colours = list(class_palette(classes))
    names = list(classes)
    if ignore_index >= len(colours):
        colours += [(0, 0, 0)] * (ignore_index - len(colours)) + [IGNORED_COLOUR]
        names += [""] * (ignore_index - len(names)) + ["ignored"]
    return colours, names


def panel(picture: ValidationPicture, classes: Sequence[str], ignore_index: int) -> Image.Image:
    """Photo | predicted | true, side by side, for TensorBoard."""
    colours, _ = mask_colours(classes, ignore_index)
    parts = [photo(picture.image), colored_map(picture.predicted, colours), colored_map(picture.target, colours)]
    canvas = Image.new("RGB", (sum(part.width for part in parts), parts[0].height), "white")
    for index, part in enumerate(parts):
        canvas.paste(part, (index * parts[0].width, 0))
    return canvas


def write_samples(run_dir: Path, pictures: Sequence[ValidationPicture], classes: Sequence[str],
                  ignore_index: int) -> None:
    """RUN/samples/NN_predicted.png and NN_true.png: the prediction and the truth blended on each photo."""
    folder = run_dir / SAMPLES_DIR
    folder.mkdir(exist_ok=True)
    colours, names = mask_colours(classes, ignore_index)
    for number, picture in enumerate(pictures):
        image = photo(picture.image)
        for kind, classes_map in (("predicted", picture.predicted), ("true", picture.target)):
            with atomic_path(folder / f"{number:02d}_{kind}.png") as temporary:
                overlay_image(image, classes_map, colours, names).save(temporary, format="PNG")
