"""The authors' ImageNet transforms in Pillow + torch: geometry, colour noise, presets, repeatability, bad options."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from support.numerics import assert_differs

from iabn_zoo.data.transforms import (
    AUGMENT_PRESETS,
    LIGHTING_EIGVAL,
    LIGHTING_EIGVEC,
    ColorJitter,
    Lighting,
    Normalize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    center_crop,
    eval_transform,
    resize_shorter,
    ten_crops,
    to_tensor,
    train_transform,
)
from iabn_zoo.errors import InvalidArgumentError


def column_image(width: int, height: int) -> Image.Image:
    """Red channel = x coordinate, green = y coordinate: every crop can be located from its pixels."""
    image = Image.new("RGB", (width, height))
    image.putdata([(x, y, 0) for y in range(height) for x in range(width)])
    return image


def test_to_tensor_keeps_pixels_and_layout():
    image = column_image(7, 5)
    tensor = to_tensor(image)
    assert tensor.shape == (3, 5, 7) and tensor.dtype == torch.float32
    assert tensor[0, 2, 6].item() == pytest.approx(6 / 255)
    assert tensor[1, 4, 3].item() == pytest.approx(4 / 255)


def test_resize_shorter_side_keeps_aspect():
    assert resize_shorter(column_image(40, 30), 15).size == (20, 15)
    assert resize_shorter(column_image(30, 60), 10).size == (10, 20)


def test_center_crop_takes_the_middle_and_pads_small_images():
    crop = center_crop(column_image(30, 20), 10)
    assert crop.getpixel((0, 0))[:2] == (10, 5)
    padded = center_crop(column_image(4, 4), 8)
    assert padded.size == (8, 8)
    assert padded.getpixel((0, 0)) == (0, 0, 0) and padded.getpixel((2, 2))[:2] == (0, 0)


def test_ten_crops_are_corners_center_and_their_mirrors():
    image = column_image(20, 16)
    crops = ten_crops(image, 8)
    assert len(crops) == 10 and all(c.size == (8, 8) for c in crops)
    corners = [c.getpixel((0, 0))[:2] for c in crops[:4]]
    assert corners == [(0, 0), (12, 0), (0, 8), (12, 8)]
    assert crops[4].getpixel((0, 0))[:2] == (6, 4)
    # The mirrored image's top-left crop is the original's top-right crop, mirrored.
    assert crops[5].tobytes() == crops[1].transpose(Image.FLIP_LEFT_RIGHT).tobytes()


@settings(max_examples=40, deadline=None)
@given(width=st.integers(1, 300), height=st.integers(1, 300), seed=st.integers(0, 2**31))
def test_random_resized_crop_region_stays_inside_the_image(width, height, seed):
    torch.manual_seed(seed)
    left, top, w, h = RandomResizedCrop(16).region(width, height)
    assert 0 <= left and 0 <= top and w >= 1 and h >= 1
    assert left + w <= width and top + h <= height


def test_random_resized_crop_samples_area_and_ratio_in_range():
    torch.manual_seed(0)
    crop = RandomResizedCrop(16, scale=(0.25, 0.5), ratio=(0.8, 1.25))
    for _ in range(200):
        _, _, w, h = crop.region(400, 400)
        assert 0.25 * 0.9 <= w * h / 400**2 <= 0.5 * 1.1
        assert 0.8 * 0.9 <= w / h <= 1.25 * 1.1
    assert crop(column_image(50, 40)).size == (16, 16)


def test_flip_mirrors_with_probability_one_and_never_with_zero():
    image = column_image(6, 3)
    assert RandomHorizontalFlip(1.0)(image).getpixel((0, 0))[0] == 5
    assert RandomHorizontalFlip(0.0)(image).getpixel((0, 0))[0] == 0


def test_brightness_scales_every_value_by_one_factor_within_strength():
    torch.manual_seed(3)
    tensor = torch.rand(3, 8, 8) + 0.1
    for _ in range(20):
        out = ColorJitter(saturation=0.0, brightness=0.4, contrast=0.0)(tensor)
        factor = out / tensor
        torch.testing.assert_close(factor, factor.flatten()[0].expand_as(factor), rtol=1e-5, atol=1e-5)
        assert 0.6 - 1e-6 <= factor.flatten()[0].item() <= 1.4 + 1e-6, f"factor {factor.flatten()[0].item()}"


def test_saturation_leaves_gray_images_alone_and_contrast_keeps_mean_luma():
    torch.manual_seed(4)
    gray = torch.rand(1, 8, 8).expand(3, 8, 8).clone()
    torch.testing.assert_close(ColorJitter(0.4, 0.0, 0.0)(gray), gray, rtol=1e-5, atol=1e-6)
    colour = torch.rand(3, 8, 8)
    weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    out = ColorJitter(0.0, 0.0, 0.4)(colour)
    assert (weights * out).sum(0).mean().item() == pytest.approx((weights * colour).sum(0).mean().item(), abs=1e-5)
    assert_differs(out, colour, 1e-2, "contrast-jittered and original image")


def test_lighting_eigenvectors_are_orthonormal():
    eigvec = torch.tensor(LIGHTING_EIGVEC)
    torch.testing.assert_close(eigvec.T @ eigvec, torch.eye(3), rtol=0, atol=2e-3)  # published to 4 digits


def test_lighting_adds_one_offset_along_the_pca_axes_with_the_stated_spread():
    torch.manual_seed(5)
    eigvec, eigval = torch.tensor(LIGHTING_EIGVEC), torch.tensor(LIGHTING_EIGVAL)
    lighting, zeros = Lighting(), torch.zeros(3, 4, 4)
    alphas = []
    for _ in range(3000):
        out = lighting(zeros)
        offset = out[:, 0, 0]
        torch.testing.assert_close(out, offset.view(3, 1, 1).expand_as(out), rtol=1e-5, atol=1e-8)
        alphas.append((eigvec.T @ offset) / eigval)  # back to the N(0, 0.1) draws
    spread = torch.stack(alphas).std(dim=0)
    torch.testing.assert_close(spread, torch.full((3,), 0.1), rtol=0.1, atol=1e-8)  # 3000 draws: 1.3% std error
    assert torch.equal(Lighting(std=0.0)(zeros), zeros)


def test_normalize_gives_zero_mean_unit_std_for_matching_statistics():
    tensor = torch.rand(3, 32, 32)
    mean, std = tensor.mean((1, 2)).tolist(), tensor.std((1, 2)).tolist()
    out = Normalize(mean, std)(tensor)
    torch.testing.assert_close(out.mean((1, 2)), torch.zeros(3), rtol=1e-5, atol=1e-5)
    with pytest.raises(InvalidArgumentError, match="std > 0"):
        Normalize((0.5, 0.5, 0.5), (0.2, 0.0, 0.2))


@pytest.mark.parametrize("augment", AUGMENT_PRESETS)
def test_training_presets_give_square_normalised_tensors_repeatably(augment):
    image = column_image(37, 29)
    transform = train_transform(24, augment)
    torch.manual_seed(7)
    first = transform(image)
    torch.manual_seed(7)
    assert torch.equal(first, transform(image))
    assert first.shape == (3, 24, 24)


def test_imagenet_preset_varies_between_draws_none_preset_does_not():
    image = column_image(37, 29)
    torch.manual_seed(8)
    assert not torch.equal(train_transform(24, "imagenet")(image), train_transform(24, "imagenet")(image))
    assert torch.equal(train_transform(24, "none")(image), train_transform(24, "none")(image))


def test_eval_transform_center_and_ten_crops():
    image = column_image(40, 30)
    assert eval_transform(16)(image).shape == (3, 16, 16)
    stacked = eval_transform(16, 20, ten_crops=True)(image)
    assert stacked.shape == (10, 3, 16, 16)
    assert torch.equal(stacked[4], eval_transform(16, 20)(image))  # the fifth crop is the center crop
    assert math.isclose(eval_transform(224).transforms[0].size, 256)


@pytest.mark.parametrize("make", [
    lambda: train_transform(24, "heavy"),
    lambda: train_transform(0, "none"),
    lambda: eval_transform(16, -1),
    lambda: eval_transform(16, interpolation="lanczos9"),
    lambda: RandomResizedCrop(16, scale=(0.5, 0.2)),
])
def test_bad_options_raise_invalid_argument(make):
    with pytest.raises(InvalidArgumentError):
        make()


def test_ten_crops_larger_than_image_is_refused():
    with pytest.raises(InvalidArgumentError, match="larger than the image"):
        ten_crops(column_image(10, 10), 12)
