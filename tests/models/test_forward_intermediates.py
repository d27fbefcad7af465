"""`forward_intermediates` as timm means it: (final features as `forward_features`, [stage maps as
`features_only=True`]), or only the maps; `indices` picks stages (None all, n the last n, a list those)."""

import copy

import pytest
import torch
from support.numerics import assert_same_function
from support.small_models import FAMILIES, images, small_model

from iabn_zoo.errors import InvalidArgumentError
from iabn_zoo.models.segmentation import SegmentationNet


def features_only_twin(model):
    """The same network (same weights) returning its stage maps."""
    twin = copy.deepcopy(model)
    twin.features_only = True
    if isinstance(twin, SegmentationNet):
        return twin
    twin.make_classifier(0)
    return twin


def seeded(fn, x):
    """fn(x) from a fixed seed, so dropout (WRN-A2 in training) draws the same masks every time."""
    torch.manual_seed(0)
    return fn(x)


@pytest.mark.parametrize("family,training", [(family, False) for family in FAMILIES]
                         + [("resnext", True), ("wider_resnet_a2", True)])
def test_final_features_and_maps_match_forward_features_and_features_only(family, training):
    model = small_model(family, "inplace").train(training)
    maps_model, features_model = features_only_twin(model), copy.deepcopy(model)
    x = images()
    with torch.no_grad():
        final, maps = seeded(model.forward_intermediates, x)
        expected_maps = seeded(maps_model, x)
        expected_final = seeded(features_model.forward_features, x)
    assert len(maps) == len(expected_maps) == len(model.feature_info)
    assert_same_function(final, expected_final, f"{family} final features")
    for index, (got, want, info) in enumerate(zip(maps, expected_maps, model.feature_info)):
        assert got.shape[1] == info.channels, f"{family} stage {index}: {got.shape[1]} channels, not {info.channels}"
        assert_same_function(got, want, f"{family} stage {index}")


@pytest.mark.parametrize("family", ["resnext", "resnet", "densenet", "vistas"])
def test_indices_pick_stages_and_intermediates_only_returns_the_list(family):
    model = small_model(family, "inplace").eval()
    x = images()
    with torch.no_grad():
        everything = model.forward_intermediates(x, intermediates_only=True)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        picked = model.forward_intermediates(x, indices=[0, -1], intermediates_only=True)
        first = model.forward_intermediates(x, indices=(0,), intermediates_only=True)
        final, some = model.forward_intermediates(x, indices=[1])
    count = len(model.feature_info)
    assert isinstance(everything, list) and len(everything) == count
    for got, want in zip(last_two, everything[-2:]):
        assert_same_function(got, want, f"{family} last two")
    assert_same_function(picked[0], everything[0], f"{family} [0, -1] first")
    assert_same_function(picked[1], everything[-1], f"{family} [0, -1] last")
    assert len(first) == 1 and first[0].shape == everything[0].shape
    assert len(some) == 1 and final.shape == everything[-1].shape


def test_maps_survive_training_and_backward_through_all():
    model = small_model("resnext", "inplace")
    x = images().requires_grad_()
    final, maps = model.forward_intermediates(x)
    (final.sum() + sum(m.sum() for m in maps[:-1])).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("indices", [0, 5, -1, True, [], [4], [-5], [0.5], "0", {0}])
def test_wrong_indices_are_refused(indices):
    model = small_model("resnet", "inplace")
    with pytest.raises(InvalidArgumentError, match="indices"):
        model.forward_intermediates(images(), indices=indices)


def test_wrong_input_is_refused():
    with pytest.raises(InvalidArgumentError, match=r"expects input of shape \(N, 3, H, W\)"):
        small_model("resnet", "inplace").forward_intermediates(torch.randn(2, 4, 32, 32, dtype=torch.float64))
