"""Transforms of an (image, mask) pair that keep the two aligned: the segmentation literature's training recipe and
the full-resolution evaluation, plus a collate that pads images of different sizes into one batch.

Training: random scale in `scale_range` (image bilinear, mask nearest), horizontal flip, optional colour jitter,
normalisation, then a random crop of (h, w); where the scaled image is smaller than the crop it is padded at the
bottom and right, the image with 0 after normalisation (the mean colour) and the mask with the ignore index, so
padding never counts in the loss or the metric. `augment="none"` keeps only the crop (at a random position, so that
the whole image is trained on), without scaling, flip or jitter. Randomness comes from torch's global generator
(the data set seeds it per sample).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from ..errors import InvalidArgumentError
from .masks import mask_tensor
from .transforms import IMAGENET_MEAN, IMAGENET_STD, ColorJitter, Normalize, check_size, to_tensor

SEGMENTATION_AUGMENTS = ("standard", "none")
DEFAULT_SCALE_RANGE = (0.5, 2.0)


def crop_size(crop: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) of a crop given as one side or as (height, width)."""
    sides = (crop, crop) if isinstance(crop, int) else tuple(crop)
    if len(sides) != 2:
        raise InvalidArgumentError(f"crop must be a side or (height, width), got {crop!r}")
    return check_size(sides[0], "crop height"), check_size(sides[1], "crop width")


def pad_to(tensor: torch.Tensor, height: int, width: int, value: float) -> torch.Tensor:
    """`tensor` (..., H, W) padded at the bottom and right with `value` to at least height x width."""
    pad_h, pad_w = max(0, height - tensor.shape[-2]), max(0, width - tensor.shape[-1])
    if not pad_h and not pad_w:
        return tensor
    return torch.nn.functional.pad(tensor, (0, pad_w, 0, pad_h), value=value)


class SegmentationEvalTransform:
    """(RGB image, class mask) -> (normalised float32 (3, H, W), int64 (H, W)) at full resolution."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.normalize = Normalize(mean, std)

    def __call__(self, image: Image.Image, mask: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        return self.normalize(to_tensor(image)), mask_tensor(mask)


class SegmentationTrainTransform:
    """Random scale, flip, optional colour jitter, normalisation and a (h, w) crop padded with `ignore_index`."""

    def __init__(self, crop: int | Sequence[int], scale_range: Sequence[float] = DEFAULT_SCALE_RANGE,
                 flip: bool = True, jitter: bool = False, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, ignore_index: int = 255):
        self.crop = crop_size(crop)
        low, high = (float(value) for value in scale_range)
        if not 0 < low <= high:
            raise InvalidArgumentError(f"scale_range must be two numbers 0 < low <= high, got {tuple(scale_range)}")
        self.scale_range = (low, high)
        self.flip = flip
        self.jitter = ColorJitter() if jitter else None
        self.normalize = Normalize(mean, std)
        self.ignore_index = ignore_index

    @classmethod
    def preset(cls, augment: str, crop: int | Sequence[int], *, scale_range: Sequence[float] = DEFAULT_SCALE_RANGE,
               jitter: bool = False, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
               ignore_index: int = 255) -> SegmentationTrainTransform:
        """"standard": scale, flip (and jitter if asked); "none": the crop alone."""
        if augment not in SEGMENTATION_AUGMENTS:
            raise InvalidArgumentError(f"augment must be one of {', '.join(SEGMENTATION_AUGMENTS)} for segmentation,"
                                       f" got {augment!r}")
        if augment == "none":
            return cls(crop, (1.0, 1.0), flip=False, jitter=False, mean=mean, std=std, ignore_index=ignore_index)
        return cls(crop, scale_range, flip=True, jitter=jitter, mean=mean, std=std, ignore_index=ignore_index)

    def _scale(self, image: Image.Image, mask: Image.Image) -> tuple[Image.Image, Image.Image]:
        if self.scale_range == (1.0, 1.0):
            return image, mask
        low, high = self.scale_range
        scale = low + (high - low) * torch.rand(()).item()
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        return image.resize(size, Image.BILINEAR), mask.resize(size, Image.NEAREST)

    def __call__(self, image: Image.Image, mask: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        if image.size != mask.size:
            raise InvalidArgumentError(f"image and mask sizes differ: {image.size} and {mask.size}")
        image, mask = self._scale(image, mask)
        if self.flip and torch.rand(()).item() < 0.5:
            image, mask = image.transpose(Image.FLIP_LEFT_RIGHT), mask.transpose(Image.FLIP_LEFT_RIGHT)
        pixels = to_tensor(image)
        if self.jitter is not None:
            pixels = self.jitter(pixels)
        height, width = self.crop
        pixels = pad_to(self.normalize(pixels), height, width, 0.0)
        labels = pad_to(mask_tensor(mask), height, width, self.ignore_index)
        top = int(torch.randint(0, pixels.shape[-2] - height + 1, ()).item())
        left = int(torch.randint(0, pixels.shape[-1] - width + 1, ()).item())
        return (pixels[:, top:top + height, left:left + width].contiguous(),
                labels[top:top + height, left:left + width].contiguous())


class PadCollate:
    """Stack (image, mask) samples of different sizes: each padded at the bottom and right to the largest height
    and width, images with 0 and masks with `ignore_index`, so that padding counts in no metric."""

    def __init__(self, ignore_index: int = 255):
        self.ignore_index = ignore_index

    def __call__(self, batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        height = max(image.shape[-2] for image, _ in batch)
        width = max(image.shape[-1] for image, _ in batch)
        images = torch.stack([pad_to(image, height, width, 0.0) for image, _ in batch])
        masks = torch.stack([pad_to(mask, height, width, self.ignore_index) for _, mask in batch])
        return images, masks
