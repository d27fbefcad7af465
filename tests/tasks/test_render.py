"""Rendering segmentations: PNGs written and read back have the right size, mode, palette and pixel values."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from PIL import Image

import iabn_zoo
from iabn_zoo.data.labels import class_colors, class_names
from iabn_zoo.errors import InvalidArgumentError
from iabn_zoo.tasks.render import classes_present, legend_font, legend_lines, render
from iabn_zoo.tasks.segment import SegmentationResult

VISTAS_CSV = Path(iabn_zoo.__file__).parent / "data" / "label_files" / "vistas_classes.csv"
# Chromatic Vistas classes (no gray that anti-aliased text could produce): bird, ground animal, person, sky.
PRESENT = (0, 1, 19, 27)
ABSENT = (20, 55)  # bicyclist (255, 0, 0) and car (0, 0, 142)


def csv_colors() -> list[tuple[int, int, int]]:
    """The Vistas colours read straight from the shipped CSV."""
    with VISTAS_CSV.open(newline="") as handle:
        return [(int(row["r"]), int(row["g"]), int(row["b"])) for row in csv.DictReader(handle)]


def pixel_values(image: Image.Image, dtype=torch.uint8) -> torch.Tensor:
    """The single-band pixel values of an image as an (H, W) tensor."""
    return torch.frombuffer(bytearray(image.tobytes()), dtype=dtype).view(image.height, image.width)


@pytest.fixture
def result():
    """A 30 x 44 map with four classes in bands (sky most frequent) and a varied confidence."""
    classes = torch.full((30, 44), 27)
    classes[20:, :] = 0
    classes[:12, :10] = 1
    classes[25:, 30:] = 19
    confidence = torch.linspace(0, 1, 30 * 44).view(30, 44)
    return SegmentationResult(classes=classes, confidence=confidence)


def write_and_read(image: Image.Image, path: Path) -> Image.Image:
    image.save(path)
    reopened = Image.open(path)
    reopened.load()
    return reopened


def test_palette_png_has_indices_and_vistas_colors(result, tmp_path):
    image = write_and_read(render(result, "palette", colors=class_colors("vistas"), names=[]), tmp_path / "p.png")
    assert image.mode == "P" and image.size == (44, 30)
    assert torch.equal(pixel_values(image).long(), result.classes)
    palette = image.getpalette()
    assert [tuple(palette[3 * i:3 * i + 3]) for i in range(65)] == csv_colors()
    assert image.convert("RGB").getpixel((0, 0)) == csv_colors()[1]


def test_raw_png_is_class_index_as_gray(result, tmp_path):
    image = write_and_read(render(result, "raw", colors=[], names=[]), tmp_path / "r.png")
    assert image.mode == "L" and image.size == (44, 30)
    assert torch.equal(pixel_values(image).long(), result.classes)


@pytest.mark.parametrize("bits, mode, top, dtype", [(8, "L", 255, torch.uint8), (16, "I;16", 65535, torch.uint16)])
def test_prob_png_is_confidence_as_gray(result, tmp_path, bits, mode, top, dtype):
    image = write_and_read(render(result, "prob", colors=[], names=[], prob_bits=bits), tmp_path / "c.png")
    assert image.mode == mode and image.size == (44, 30)
    expected = (result.confidence * top).round()
    assert torch.equal(pixel_values(image, dtype).long(), expected.long())


def test_overlay_blends_the_photo_and_lists_the_classes_present(result, tmp_path):
    photo = Image.new("RGB", (44, 30), (10, 200, 30))
    colors, names = class_colors("vistas"), class_names("vistas")
    image = write_and_read(render(result, "overlay", colors=colors, names=names, photo=photo), tmp_path / "o.png")
    assert image.mode == "RGB" and image.width > 44 and image.height >= 30
    sky = colors[27]
    assert image.getpixel((40, 5)) == pytest.approx(tuple((a + b) / 2 for a, b in zip((10, 200, 30), sky)), abs=1)
    panel = image.crop((44, 0, image.width, image.height))
    panel_colors = {color for _, color in panel.getcolors(maxcolors=1 << 16)}
    assert {colors[index] for index in PRESENT} <= panel_colors
    assert not {colors[index] for index in ABSENT} & panel_colors
    swatch_rows = [min(y for y in range(panel.height) for x in range(panel.width)
                       if panel.getpixel((x, y)) == colors[index]) for index in PRESENT]
    shares = dict(classes_present(result.classes))
    by_frequency = sorted(PRESENT, key=lambda index: -shares[index])
    assert [index for _, index in sorted(zip(swatch_rows, PRESENT))] == by_frequency


def test_overlay_legend_grows_the_canvas_for_many_classes(tmp_path):
    classes = torch.arange(65).repeat_interleave(2).view(10, 13)
    photo = Image.new("RGB", (13, 10), "gray")
    image = render(SegmentationResult(classes, torch.ones(10, 13)), "overlay", colors=class_colors("vistas"),
                   names=class_names("vistas"), photo=photo)
    assert image.height > 65 * 12  # one legend line per class, none cut off


def test_classes_present_counts_shares(result):
    shares = dict(classes_present(result.classes))
    assert set(shares) == set(PRESENT)
    assert shares[0] == pytest.approx((10 * 44 - 5 * 14) / (30 * 44))  # rows 20.., less the person patch
    assert sum(shares.values()) == pytest.approx(1.0)


def test_bad_requests_are_refused(result):
    colors = class_colors("vistas")
    with pytest.raises(InvalidArgumentError, match="output must be one of"):
        render(result, "jpeg", colors=colors, names=[])
    with pytest.raises(InvalidArgumentError, match="photo"):
        render(result, "overlay", colors=colors, names=[])
    with pytest.raises(InvalidArgumentError, match="differs"):
        render(result, "overlay", colors=colors, names=[], photo=Image.new("RGB", (10, 10)))
    with pytest.raises(InvalidArgumentError, match="8 or 16"):
        render(result, "prob", colors=colors, names=[], prob_bits=12)
    wide = SegmentationResult(result.classes + 300, result.confidence)
    for output in ("raw", "palette"):
        with pytest.raises(InvalidArgumentError, match="0..255"):
            render(wide, output, colors=colors, names=[])


def test_overlay_legend_leaves_the_photo_pixels_alone(result):
    photo = Image.effect_noise((44, 30), 60).convert("RGB")
    colors = class_colors("vistas")
    image = render(result, "overlay", colors=colors, names=class_names("vistas"), photo=photo)
    blended = Image.blend(photo, render(result, "palette", colors=colors, names=[]).convert("RGB"), 0.5)
    assert image.crop((0, 0, 44, 30)).tobytes() == blended.tobytes()


def dark_columns(panel: Image.Image, top: int, bottom: int) -> list[int]:
    """Columns of `panel` with text-dark pixels between rows top and bottom."""
    gray = panel.convert("L")
    return [x for x in range(panel.width) if any(gray.getpixel((x, y)) < 100 for y in range(top, bottom))]


@pytest.mark.parametrize("height, font_size", [(60, 12), (1024, 26), (2000, 50)])
def test_legend_text_is_sized_for_the_photo_with_a_gap_before_the_share(height, font_size):
    assert legend_font(height).size == font_size
    width = height * 3 // 2
    classes = torch.full((height, width), 27)  # sky, and a band of road
    classes[height // 2:, :] = 13
    photo = Image.new("RGB", (width, height), (128, 128, 128))
    image = render(SegmentationResult(classes, torch.ones(height, width)), "overlay", colors=class_colors("vistas"),
                   names=class_names("vistas"), photo=photo)
    panel = image.crop((width, 0, image.width, image.height))
    pad = font_size // 2
    swatch_end = pad + font_size
    columns = [x for x in dark_columns(panel, pad, pad + font_size) if x > swatch_end + 1]
    gaps = [b - a for a, b in zip(columns, columns[1:])]
    assert max(gaps) >= font_size, gaps  # "Sky" and "50.0%" in columns apart, not run together


def test_classes_under_half_a_percent_are_left_out_of_the_legend():
    classes = torch.full((100, 100), 27)
    classes.view(-1)[:40] = 0  # bird: 0.4% of the pixels
    classes.view(-1)[40:100] = 19  # person: 0.6%
    lines = legend_lines(classes, class_names("vistas"))
    assert [index for index, _, _ in lines] == [27, 19]
    assert lines[1][2] == "0.6%"
    colors = class_colors("vistas")
    image = render(SegmentationResult(classes, torch.ones(100, 100)), "overlay", colors=colors,
                   names=class_names("vistas"), photo=Image.new("RGB", (100, 100)))
    panel_colors = {color for _, color in image.crop((100, 0, image.width, image.height)).getcolors(1 << 16)}
    assert colors[19] in panel_colors and colors[0] not in panel_colors
