"""The colours a segmentation's classes are drawn in: the Vistas palette for the Vistas classes, else a generated
one (the bit-interleaving scheme of the PASCAL VOC palette: class 0 black, then well-separated colours), so that a
fine-tuning run's pictures and `iabn-zoo segment --weights RUN` show the same class in the same colour."""

from __future__ import annotations

from collections.abc import Sequence

from ..data.labels import class_colors, vistas_classes

Color = tuple[int, int, int]


def generated_palette(count: int) -> list[Color]:
    """`count` distinct colours: the bits of each class index spread over the high bits of r, g and b."""
    colours = []
    for index in range(count):
        red = green = blue = 0
        value = index
        for shift in range(7, -1, -1):
            red |= ((value >> 0) & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        colours.append((red, green, blue))
    return colours


def class_palette(classes: Sequence[str]) -> list[Color]:
    """The colour of each class: Vistas's own for the Vistas class list, a generated palette otherwise."""
    if list(classes) == vistas_classes():
        return class_colors("vistas")
    return generated_palette(len(classes))
