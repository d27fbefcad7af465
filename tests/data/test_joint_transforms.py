"""Joint (image, mask) transforms: shapes, padding with the ignore index, image and mask staying aligned through
scale, crop and flip, augmentation as a function of (seed, epoch, index), `augment="none"`, the padding collate."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from support.segmentation_layouts import PALETTE, scene, write_folders_data

from iabn_zoo.data.joint_transforms import PadCollate, SegmentationEvalTransform, SegmentationTrainTransform
from iabn_zoo.data.segmentation_data import open_segmentation_data
from iabn_zoo.errors import InvalidArgumentError

RAW = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # tensors stay in [0, 1]: colours can be read back
# A pixel this close (any channel, [0, 1] units) to a palette colour has more than 99% of its interpolation weight
# from pixels of that colour, so the source pixel nearest to it (whose weight is far above 1% at any scale from 0.3
# up) has that colour too, and the nearest-neighbour mask must hold that colour's class there.
CLOSE = 2 / 255


def as_mask(mask: Image.Image) -> Image.Image:
    return mask.convert("I")


def classes_from_colours(image: torch.Tensor) -> torch.Tensor:
    """The class of the palette colour each pixel is close to, -1 where it is close to none (blended edges)."""
    palette = torch.tensor(PALETTE, dtype=torch.float32).div(255).view(-1, 3, 1, 1)
    distance = (image.unsqueeze(0) - palette).abs().amax(dim=1)
    nearest = distance.argmin(dim=0)
    return torch.where(distance.amin(dim=0) < CLOSE, nearest, -1)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), crop=st.tuples(st.integers(8, 80), st.integers(8, 80)),
       low=st.floats(0.3, 1.0), spread=st.floats(0.0, 1.5), draws=st.integers(0, 2**31),
       mode=st.sampled_from(["L", "I"]))
def test_mask_stays_aligned_with_the_image_through_scale_crop_and_flip(seed, crop, low, spread, draws, mode):
    image, mask = scene(seed)
    transform = SegmentationTrainTransform(crop, scale_range=(low, low + spread), ignore_index=255, **RAW)
    torch.manual_seed(draws)
    pixels, labels = transform(image, mask.convert(mode))
    assert pixels.shape == (3, *crop) and labels.shape == crop and labels.dtype == torch.int64
    colour_class = classes_from_colours(pixels)
    labelled = (labels != 255) & (colour_class >= 0)
    wrong = (labels != colour_class) & labelled
    assert not wrong.any(), f"{wrong.sum()} of {labelled.sum()} pixels: mask and image disagree"
    assert (pixels[:, labels == 255] == 0).all(), "padding of the image is not 0"


def test_flip_mirrors_image_and_mask_together():
    image, mask = scene(3)
    transform = SegmentationTrainTransform((32, 48), scale_range=(1, 1), **RAW)
    plain = SegmentationEvalTransform(**RAW)(image, as_mask(mask))
    seen = set()
    for draw in range(20):
        torch.manual_seed(draw)
        pixels, labels = transform(image, as_mask(mask))
        flipped = torch.equal(labels, plain[1].flip(-1))
        assert torch.equal(classes_from_colours(pixels), labels.where(labels != 255, 0))
        assert torch.equal(pixels, plain[0].flip(-1) if flipped else plain[0])
        assert flipped or torch.equal(labels, plain[1])
        seen.add(flipped)
    assert seen == {True, False}


def test_a_crop_larger_than_the_image_is_padded_with_zero_and_ignore():
    image, mask = scene(4)
    transform = SegmentationTrainTransform.preset("none", (40, 64), ignore_index=7)
    pixels, labels = transform(image, as_mask(mask))
    expected_pixels, expected_labels = SegmentationEvalTransform()(image, as_mask(mask))
    assert torch.equal(pixels[:, :32, :48], expected_pixels) and torch.equal(labels[:32, :48], expected_labels)
    assert (labels[32:] == 7).all() and (labels[:, 48:] == 7).all()
    assert (pixels[:, 32:] == 0).all() and (pixels[:, :, 48:] == 0).all()


def test_augment_none_only_crops_at_a_random_position():
    image, mask = scene(5)
    transform = SegmentationTrainTransform.preset("none", (16, 16), jitter=True)
    full_pixels, full_labels = SegmentationEvalTransform()(image, as_mask(mask))
    corners = set()
    for draw in range(10):
        torch.manual_seed(draw)
        pixels, labels = transform(image, as_mask(mask))
        windows = [(top, left) for top in range(17) for left in range(33)
                   if torch.equal(full_labels[top:top + 16, left:left + 16], labels)
                   and torch.equal(full_pixels[:, top:top + 16, left:left + 16], pixels)]
        assert windows, "the crop is not an unscaled, unflipped, unjittered window of the image"
        corners.add(windows[0])
    assert len(corners) > 1


def test_jitter_changes_colours_but_not_the_mask():
    image, mask = scene(6)
    torch.manual_seed(0)
    plain = SegmentationTrainTransform((32, 48), scale_range=(1, 1), jitter=False)(image, as_mask(mask))
    torch.manual_seed(0)
    jittered = SegmentationTrainTransform((32, 48), scale_range=(1, 1), jitter=True)(image, as_mask(mask))
    assert torch.equal(plain[1], jittered[1]) and not torch.allclose(plain[0], jittered[0])


def test_bad_options_are_refused():
    with pytest.raises(InvalidArgumentError, match="augment"):
        SegmentationTrainTransform.preset("imagenet", 32)
    with pytest.raises(InvalidArgumentError, match="scale_range"):
        SegmentationTrainTransform(32, scale_range=(2.0, 1.0))
    with pytest.raises(InvalidArgumentError, match="crop"):
        SegmentationTrainTransform((32, 0))


def test_augmentation_is_a_function_of_seed_epoch_and_index(tmp_path):
    write_folders_data(tmp_path, train=3, val=1)
    transform = SegmentationTrainTransform(24, jitter=True)

    def items(seed, epoch, order):
        data = open_segmentation_data(tmp_path, train_transform=transform, splits=("train",), seed=seed)
        data.train.set_epoch(epoch)
        torch.manual_seed(len(order))  # the global generator must not matter
        return {index: data.train[index] for index in order}

    first, again = items(0, 1, [0, 1, 2]), items(0, 1, [2, 0, 1, 1])
    for index in range(3):
        assert all(torch.equal(a, b) for a, b in zip(first[index], again[index])), f"item {index} differs"
    other_epoch, other_seed = items(0, 2, [0, 1, 2]), items(1, 1, [0, 1, 2])
    assert any(not torch.equal(first[i][0], other_epoch[i][0]) for i in range(3))
    assert any(not torch.equal(first[i][0], other_seed[i][0]) for i in range(3))


def test_pad_collate_stacks_different_sizes_with_zero_and_ignore():
    small = (torch.ones(3, 2, 3), torch.zeros(2, 3, dtype=torch.int64))
    large = (torch.ones(3, 4, 2), torch.ones(4, 2, dtype=torch.int64))
    images, masks = PadCollate(ignore_index=9)([small, large])
    assert images.shape == (2, 3, 4, 3) and masks.shape == (2, 4, 3)
    assert (images[0, :, 2:] == 0).all() and (masks[0, 2:] == 9).all() and (masks[1, :, 2] == 9).all()
    assert (images[0, :, :2, :3] == 1).all() and (masks[1, :, :2] == 1).all()
