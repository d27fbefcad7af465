"""Images people can look at from a segmentation: palette PNGs, gray class maps, confidence maps, overlays.

`palette`: class indices in a 'P' image whose palette holds the class colours (viewers show colours, tools read
indices); `raw`: class index per pixel as 8-bit gray; `prob`: confidence as 8- or 16-bit gray; `overlay`: the
coloured map blended on the photo, with a legend of the classes present.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from ..errors import InvalidArgumentError
from .segment import SegmentationResult

OUTPUT_MODES = ("palette", "raw", "prob", "overlay")
Color = tuple[int, int, int]

OVERLAY_ALPHA = 0.5
LEGEND_PADDING = 6
SWATCH = 12
LEGEND_MIN_SHARE = 0.005  # classes covering less of the image are left out of the legend
MIN_FONT_SIZE, MAX_FONT_SIZE = 12, 64
PHOTO_HEIGHT_PER_FONT_PIXEL = 40  # a 1024 px high photo gets a 26 px font


def check_output_mode(mode: str) -> str:
    """Validate an output mode name."""
    if mode not in OUTPUT_MODES:
        raise InvalidArgumentError(f"output must be one of {', '.join(OUTPUT_MODES)}, got {mode!r}")
    return mode


def tensor_to_image(values: torch.Tensor, mode: str) -> Image.Image:
    """An (H, W) tensor already in the pixel type of `mode` ('L', 'P': uint8; 'I;16': uint16) as a PIL image."""
    height, width = values.shape
    values = values.detach().cpu().contiguous()
    data = ctypes.string_at(values.data_ptr(), values.numel() * values.element_size())  # bytes(storage) is per byte
    return Image.frombytes(mode, (width, height), data)


def class_indices_8bit(classes: torch.Tensor) -> torch.Tensor:
    """Class map as uint8; more than 256 classes cannot be stored in an 8-bit image."""
    if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) > 255):
        raise InvalidArgumentError(
            f"class indices must lie in 0..255 for an 8-bit image, got {int(classes.min())}..{int(classes.max())}; "
            "use --output prob or the Python API for models with more classes"
        )
    return classes.to(torch.uint8)


def palette_bytes(colors: Sequence[Color]) -> list[int]:
    """A 256-entry PIL palette: the class colours, then black."""
    if len(colors) > 256:
        raise InvalidArgumentError(f"a palette holds at most 256 colours, got {len(colors)}")
    flat = [channel for color in colors for channel in color]
    return flat + [0] * (768 - len(flat))


def palette_image(classes: torch.Tensor, colors: Sequence[Color]) -> Image.Image:
    """'P' image: the class index per pixel, shown in the class colours."""
    image = tensor_to_image(class_indices_8bit(classes), "P")
    image.putpalette(palette_bytes(colors))
    return image


def raw_image(classes: torch.Tensor) -> Image.Image:
    """'L' image: the class index per pixel as gray level."""
    return tensor_to_image(class_indices_8bit(classes), "L")


def prob_image(confidence: torch.Tensor, bits: int = 8) -> Image.Image:
    """Confidence in [0, 1] as gray: 'L' (0..255) with 8 bits, 'I;16' (0..65535) with 16."""
    if bits not in (8, 16):
        raise InvalidArgumentError(f"probability images have 8 or 16 bits, got {bits}")
    top = 255 if bits == 8 else 65535
    levels = (confidence.float().clamp(0, 1) * top).round()
    if bits == 8:
        return tensor_to_image(levels.to(torch.uint8), "L")
    return tensor_to_image(levels.to(torch.uint16), "I;16")


def colored_map(classes: torch.Tensor, colors: Sequence[Color]) -> Image.Image:
    """RGB image of the class colours."""
    return palette_image(classes, colors).convert("RGB")


def classes_present(classes: torch.Tensor) -> list[tuple[int, float]]:
    """(class index, share of pixels) of every class in the map, most frequent first."""
    counts = torch.bincount(classes.flatten().long())
    present = [(index, int(count)) for index, count in enumerate(counts.tolist()) if count]
    present.sort(key=lambda item: (-item[1], item[0]))
    total = max(1, classes.numel())
    return [(index, count / total) for index, count in present]


def legend_lines(classes: torch.Tensor, names: Sequence[str]) -> list[tuple[int, str, str]]:
    """(class index, name, '12.3%') for the legend, most frequent class first, classes under LEGEND_MIN_SHARE left
    out (a legend of specks tells nothing)."""
    return [(index, names[index] if index < len(names) else f"class {index}", f"{share:.1%}")
            for index, share in classes_present(classes) if share >= LEGEND_MIN_SHARE]


def legend_font(photo_height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's own font at a size readable beside a photo of this height (the bitmap font without FreeType)."""
    size = max(MIN_FONT_SIZE, min(MAX_FONT_SIZE, round(photo_height / PHOTO_HEIGHT_PER_FONT_PIXEL)))
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):
        return ImageFont.load_default()


def overlay_image(photo: Image.Image, classes: torch.Tensor, colors: Sequence[Color], names: Sequence[str],
                  *, alpha: float = OVERLAY_ALPHA) -> Image.Image:
    """The photo with the coloured map blended on it, and beside it (never over it) a legend of the classes present:
    a swatch, the name, and the share right-aligned in its own column."""
    if not 0 <= alpha <= 1:
        raise InvalidArgumentError(f"overlay alpha must lie in [0, 1], got {alpha}")
    photo = photo.convert("RGB")
    if photo.size != (classes.shape[1], classes.shape[0]):
        raise InvalidArgumentError(f"photo size {photo.size} differs from the class map's {tuple(classes.shape[::-1])}")
    blended = Image.blend(photo, colored_map(classes, colors), alpha)
    font = legend_font(photo.height)
    lines = legend_lines(classes, names)
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (SWATCH, 0)
    swatch = max(SWATCH, ascent)
    pad = max(LEGEND_PADDING, swatch // 2)
    line_height = max(swatch, ascent + descent) + pad // 2
    name_width = max((int(font.getlength(name)) for _, name, _ in lines), default=0)
    share_width = max((int(font.getlength(share)) for _, _, share in lines), default=0)
    panel_width = pad + swatch + pad + name_width + 2 * pad + share_width + pad
    legend_height = 2 * pad + line_height * len(lines)
    canvas = Image.new("RGB", (photo.width + panel_width, max(photo.height, legend_height)), "white")
    canvas.paste(blended, (0, 0))
    draw = ImageDraw.Draw(canvas)
    left = photo.width + pad
    share_right = canvas.width - pad
    for row, (index, name, share) in enumerate(lines):
        top = pad + row * line_height
        color = tuple(colors[index]) if index < len(colors) else (0, 0, 0)
        draw.rectangle([left, top, left + swatch - 1, top + swatch - 1], fill=color, outline="black")
        draw.text((left + swatch + pad, top), name, fill="black", font=font)
        draw.text((share_right - font.getlength(share), top), share, fill="black", font=font)
    return canvas


def render(result: SegmentationResult, output: str, *, colors: Sequence[Color], names: Sequence[str],
           photo: Image.Image | None = None, prob_bits: int = 8) -> Image.Image:
    """The image of one output mode for a segmentation result (`photo` is needed for `overlay`)."""
    check_output_mode(output)
    if output == "palette":
        return palette_image(result.classes, colors)
    if output == "raw":
        return raw_image(result.classes)
    if output == "prob":
        return prob_image(result.confidence, prob_bits)
    if photo is None:
        raise InvalidArgumentError("the overlay output needs the photo the segmentation was made from")
    return overlay_image(photo, result.classes, colors, names)
