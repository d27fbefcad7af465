"""Image transforms of the authors' ImageNet recipe, written with Pillow and torch (no torchvision needed).

Training: random-resized crop, horizontal flip, then on the [0, 1] tensor colour jitter (saturation, brightness,
contrast in random order) and PCA lighting noise, then normalisation. Evaluation: resize of the shorter side and a
center crop, or ten crops (four corners and center, and the same of the mirrored image).
Randomness comes from torch's global generator, so `torch.manual_seed` makes a pipeline repeatable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from PIL import Image

from ..errors import InvalidArgumentError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# PCA of ImageNet's RGB pixels (AlexNet's lighting noise), as used by the authors' training script.
LIGHTING_EIGVAL = (0.2175, 0.0188, 0.0045)
LIGHTING_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
LIGHTING_STD = 0.1
JITTER_STRENGTH = 0.4
GRAY_WEIGHTS = (0.299, 0.587, 0.114)

# Evaluation resizes the shorter side to crop * 256 / 224 before the center crop, as ImageNet's 256 -> 224.
EVAL_RESIZE_RATIO = 256 / 224

AUGMENT_PRESETS = ("imagenet", "light", "none")
INTERPOLATIONS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}

Transform = Callable[[object], object]


def check_size(size: int, what: str = "size", minimum: int = 1) -> int:
    """Validate an image side length."""
    if not isinstance(size, int) or isinstance(size, bool) or size < minimum:
        raise InvalidArgumentError(f"{what} must be an integer >= {minimum}, got {size!r}")
    return size


def resample_filter(interpolation: str) -> int:
    """Pillow's resampling filter for an interpolation name."""
    try:
        return INTERPOLATIONS[interpolation]
    except KeyError:
        raise InvalidArgumentError(
            f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}"
        ) from None


class Compose:
    """Apply transforms one after the other."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, x):
        for transform in self.transforms:
            x = transform(x)
        return x

    def __repr__(self) -> str:
        return f"Compose({', '.join(repr(t) for t in self.transforms)})"


def to_tensor(image: Image.Image) -> torch.Tensor:
    """A (C, H, W) float tensor in [0, 1] from a Pillow image."""
    channels = len(image.getbands())
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(image.height, image.width, channels).permute(2, 0, 1).float().div_(255)


class ToTensor:
    """Pillow image -> (C, H, W) float tensor in [0, 1]."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return to_tensor(image)


class Normalize:
    """Subtract the per-channel mean and divide by the standard deviation."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise InvalidArgumentError(f"mean and std need one value per channel and std > 0, got {mean}, {std}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return (tensor - self.mean) / self.std


def resize_shorter(image: Image.Image, size: int, interpolation: str = "bilinear") -> Image.Image:
    """Scale so that the shorter side is `size`, keeping the aspect ratio (torchvision's `Resize(int)`)."""
    width, height = image.size
    if width <= height:
        new_size = (size, int(size * height / width))
    else:
        new_size = (int(size * width / height), size)
    if new_size == image.size:
        return image
    return image.resize(new_size, resample_filter(interpolation))


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """The central `size` x `size` region; smaller images are padded with black first."""
    width, height = image.size
    if width < size or height < size:
        padded = Image.new(image.mode, (max(width, size), max(height, size)))
        padded.paste(image, ((padded.width - width) // 2, (padded.height - height) // 2))
        image, (width, height) = padded, padded.size
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def five_crops(image: Image.Image, size: int) -> list[Image.Image]:
    """Top-left, top-right, bottom-left, bottom-right and center crops of side `size`."""
    width, height = image.size
    if width < size or height < size:
        raise InvalidArgumentError(f"crop {size} is larger than the image ({width}x{height}); resize it first")
    corners = [(0, 0), (width - size, 0), (0, height - size), (width - size, height - size)]
    crops = [image.crop((x, y, x + size, y + size)) for x, y in corners]
    return crops + [center_crop(image, size)]


def ten_crops(image: Image.Image, size: int) -> list[Image.Image]:
    """The five crops of the image followed by the five crops of its mirror image."""
    return five_crops(image, size) + five_crops(image.transpose(Image.FLIP_LEFT_RIGHT), size)


class Resize:
    """Scale the shorter side to `size`."""

    def __init__(self, size: int, interpolation: str = "bilinear"):
        self.size = check_size(size, "resize")
        self.interpolation = interpolation
        resample_filter(interpolation)

    def __call__(self, image: Image.Image) -> Image.Image:
        return resize_shorter(image, self.size, self.interpolation)


class CenterCrop:
    """Crop the central square of side `size`."""

    def __init__(self, size: int):
        self.size = check_size(size, "crop")

    def __call__(self, image: Image.Image) -> Image.Image:
        return center_crop(image, self.size)


class TenCrops:
    """Ten crops of side `size`, each converted and normalised, stacked into a (10, C, H, W) tensor."""

    def __init__(self, size: int, normalize: Normalize):
        self.size = check_size(size, "crop")
        self.normalize = normalize

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.stack([self.normalize(to_tensor(crop)) for crop in ten_crops(image, self.size)])


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


class RandomResizedCrop:
    """A random region of `scale` x the area and aspect ratio in `ratio`, resized to `size` x `size`.

    Same sampling as torchvision's: ten tries, then a center crop of the clamped aspect ratio.
    """

    def __init__(self, size: int, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), interpolation: str = "bilinear"):
        if not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
            raise InvalidArgumentError(f"need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1], "
                                       f"got scale={scale}, ratio={ratio}")
        self.size = check_size(size, "crop")
        self.scale = scale
        self.ratio = ratio
        self.resample = resample_filter(interpolation)

    def region(self, width: int, height: int) -> tuple[int, int, int, int]:
        """A random (left, top, crop width, crop height) inside a `width` x `height` image."""
        area = width * height
        log_low, log_high = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target_area = area * _uniform(*self.scale)
            aspect = math.exp(_uniform(log_low, log_high))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, ()).item())
                left = int(torch.randint(0, width - w + 1, ()).item())
                return left, top, w, h
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            w, h = int(round(height * self.ratio[1])), height
        else:
            w, h = width, height
        return (width - w) // 2, (height - h) // 2, w, h

    def __call__(self, image: Image.Image) -> Image.Image:
        left, top, w, h = self.region(*image.size)
        return image.resize((self.size, self.size), self.resample, box=(left, top, left + w, top + h))


class RandomHorizontalFlip:
    """Mirror the image left-right with probability `p`."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: Image.Image) -> Image.Image:
        if torch.rand(()).item() < self.p:
            return image.transpose(Image.FLIP_LEFT_RIGHT)
        return image


def _gray(tensor: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor(GRAY_WEIGHTS, dtype=tensor.dtype).view(3, 1, 1)
    return (weights * tensor).sum(0, keepdim=True)


def _blend(tensor: torch.Tensor, other: torch.Tensor, alpha: float) -> torch.Tensor:
    return tensor * alpha + other * (1 - alpha)


class ColorJitter:
    """Saturation, brightness and contrast changes of up to +-`strength`, in random order, on a [0, 1] tensor.

    As in the authors' recipe each factor is drawn from U(1 - strength, 1 + strength) and values are not clamped.
    """

    def __init__(self, saturation: float = JITTER_STRENGTH, brightness: float = JITTER_STRENGTH,
                 contrast: float = JITTER_STRENGTH):
        self.strengths = {"saturation": saturation, "brightness": brightness, "contrast": contrast}

    def _adjust(self, kind: str, tensor: torch.Tensor) -> torch.Tensor:
        strength = self.strengths[kind]
        alpha = _uniform(1 - strength, 1 + strength)
        if kind == "saturation":
            return _blend(tensor, _gray(tensor), alpha)
        if kind == "brightness":
            return tensor * alpha
        return _blend(tensor, _gray(tensor).mean(), alpha)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        kinds = list(self.strengths)
        for position in torch.randperm(len(kinds)).tolist():
            tensor = self._adjust(kinds[position], tensor)
        return tensor


class Lighting:
    """AlexNet-style PCA lighting noise: add eigvec @ (alpha * eigval), alpha ~ N(0, std), to every pixel."""

    def __init__(self, std: float = LIGHTING_STD, eigval: Sequence[float] = LIGHTING_EIGVAL,
                 eigvec: Sequence[Sequence[float]] = LIGHTING_EIGVEC):
        self.std = std
        self.eigval = torch.tensor(eigval, dtype=torch.float32)
        self.eigvec = torch.tensor(eigvec, dtype=torch.float32)

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.std == 0:
            return tensor
        alpha = torch.randn(3) * self.std
        offset = self.eigvec @ (alpha * self.eigval)
        return tensor + offset.view(3, 1, 1).to(tensor.dtype)


def train_transform(image_size: int, augment: str = "imagenet", *, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD, interpolation: str = "bilinear") -> Compose:
    """Training pipeline: `imagenet` is the authors' recipe; `light` a mild crop (no flip, no colour change)
    suited to small or non-photographic images such as digits; `none` only resizes and center-crops."""
    check_size(image_size, "image_size")
    normalize = Normalize(mean, std)
    if augment == "imagenet":
        return Compose([RandomResizedCrop(image_size, interpolation=interpolation), RandomHorizontalFlip(),
                        ToTensor(), ColorJitter(), Lighting(), normalize])
    if augment == "light":
        return Compose([RandomResizedCrop(image_size, scale=(0.7, 1.0), ratio=(0.9, 1 / 0.9),
                                          interpolation=interpolation), ToTensor(), normalize])
    if augment == "none":
        return Compose([Resize(image_size, interpolation), CenterCrop(image_size), ToTensor(), normalize])
    raise InvalidArgumentError(f"augment must be one of {', '.join(AUGMENT_PRESETS)}, got {augment!r}")


def eval_transform(crop: int, scale: int | None = None, *, ten_crops: bool = False,
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   interpolation: str = "bilinear") -> Compose:
    """Evaluation pipeline: shorter side to `scale` (default crop * 256 / 224; 0 keeps the size), then a center
    crop of `crop`, or ten crops stacked as (10, C, H, W)."""
    check_size(crop, "crop")
    if scale is None:
        scale = int(round(crop * EVAL_RESIZE_RATIO))
    if not isinstance(scale, int) or scale < 0:
        raise InvalidArgumentError(f"scale must be an integer >= 0 (0: no resize), got {scale!r}")
    normalize = Normalize(mean, std)
    steps: list[Transform] = [Resize(scale, interpolation)] if scale else []
    if ten_crops:
        return Compose(steps + [TenCrops(crop, normalize)])
    return Compose(steps + [CenterCrop(crop), ToTensor(), normalize])


def eval_scale_for(augment: str, image_size: int) -> int:
    """The evaluation resize that matches a training preset: ImageNet's 256/224 ratio, else the crop itself."""
    return int(round(image_size * EVAL_RESIZE_RATIO)) if augment == "imagenet" else image_size
