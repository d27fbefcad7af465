"""How much memory a network needs at an input size, known before anything runs: a forward pass on the meta device
(shapes only, nothing allocated, instant even at 100000 pixels) measures lower bounds of its activations.

Both bounds count only what no implementation can avoid, so a job refused on them could never have fit:
- training keeps the input of every convolution and linear layer for its weight gradient;
- inference holds, at some moment, the input and the output of its largest convolution together.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import InvalidArgumentError
from ..factory import create_model
from ..system.resources import check_fits

WEIGHTED_LAYERS = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class ImageFootprint:
    """Lower bounds, in bytes, of the activations one image of a given size needs."""

    training: int
    inference: int


class NetworkFootprint:
    """The activation footprint of one network (an architecture, weights name or RUN directory) at any input size."""

    def __init__(self, model: str | os.PathLike[str]):
        with torch.device("meta"):
            try:  # standard norm layers: the same shapes, and no synchronisation across ranks to attempt
                self.network = create_model(str(model), pretrained=False, bn_mode="standard",
                                            backbone_weights=None).train()
            except InvalidArgumentError:  # an architecture without a bn_mode option
                self.network = create_model(str(model), pretrained=False, backbone_weights=None).train()
        self.network.requires_grad_(False)

    def per_image(self, height: int, width: int) -> ImageFootprint:
        """The footprint of one float32 image of `height` x `width` pixels."""
        kept, largest = [0], [0]

        def measure(module: nn.Module, inputs: tuple, output: object) -> None:
            if not inputs or not isinstance(inputs[0], torch.Tensor) or not isinstance(output, torch.Tensor):
                return
            in_bytes = inputs[0].numel() * inputs[0].element_size()
            kept[0] += in_bytes
            largest[0] = max(largest[0], in_bytes + output.numel() * output.element_size())

        hooks = [m.register_forward_hook(measure) for m in self.network.modules() if isinstance(m, WEIGHTED_LAYERS)]
        try:
            with torch.no_grad():  # two images: batch statistics in training mode need more than one value
                self.network(torch.empty(2, 3, height, width, device="meta"))
        finally:
            for hook in hooks:
                hook.remove()
        return ImageFootprint(training=kept[0] // 2, inference=largest[0] // 2)


def check_training_fits(model: str | os.PathLike[str], image_size: int | tuple[int, int], batch_size: int,
                        device: torch.device) -> None:
    """Refuse a fine-tuning step at a side or (H, W) that cannot fit `device`, naming image_size and batch_size."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    footprint = NetworkFootprint(model).per_image(height, width)
    size = f"{height}" if height == width else f"{height}x{width}"
    check_fits(footprint.training * batch_size, device, lower=("image_size", "batch_size"),
               what=f"a training step of {model} at {size} px with a batch of {batch_size}")


def check_inference_fits(model: str | os.PathLike[str], image_size: int, images: int, device: torch.device, *,
                         resize: int = 0, lower: Sequence[str] = ("image_size", "batch_size")) -> None:
    """Refuse a batch of `images` crops of `image_size` px (each cut from an image resized to `resize` px) that
    cannot fit `device`, naming the parameters in `lower`."""
    footprint = NetworkFootprint(model).per_image(image_size, image_size)
    check_fits(footprint.inference * images + 3 * resize * resize, device, lower=lower,
               what=f"a batch of {images} crop(s) of {image_size} px through {model}")
