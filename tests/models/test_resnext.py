"""ResNeXt 50/101/152 (pre-activation, 64 groups): construction, a small training step per backend, features_only,
per-module dilation, bad input."""

import copy
import re

import pytest
import torch
import torch.nn as nn
from support.backends import BACKENDS
from support.numerics import assert_same_function, float64_tol, train_step

from iabn_zoo.errors import InvalidArgumentError, UnknownNameError
from iabn_zoo.factory import create_model, list_models
from iabn_zoo.layers import convert_norm
from iabn_zoo.layers.pooling import LeanMaxPool2d

STRUCTURES = {"resnext50": (3, 4, 6, 3), "resnext101": (3, 4, 23, 3), "resnext152": (3, 8, 36, 3)}






def blocks_per_module(model: nn.Module) -> tuple[int, ...]:
    return tuple(len(getattr(model, f"mod{index}")) for index in range(2, 6))


def test_every_resnext_is_registered():
    assert set(STRUCTURES) <= set(list_models("resnext*"))


@pytest.mark.parametrize("arch", sorted(STRUCTURES))
def test_full_size_construction(arch):
    model = create_model(arch)
    assert blocks_per_module(model) == STRUCTURES[arch]
    conv2 = model.mod2.block1.convs.conv2
    assert conv2.groups == 64 and conv2.weight.shape == (128, 2, 3, 3)
    assert model.mod5.block3.convs.conv3.out_channels == model.num_features == 2048
    assert model.get_classifier().weight.shape == (1000, 2048)
    assert isinstance(model.mod1.pool, LeanMaxPool2d)  # in-place default: the lean pooling


def test_deeper_networks_only_add_blocks():
    """resnext50's entries are all in resnext101 with the same shapes; the extra ones are mod4 blocks 7..23."""
    small = {k: v.shape for k, v in create_model("resnext50").state_dict().items()}
    large = {k: v.shape for k, v in create_model("resnext101").state_dict().items()}
    assert all(large[key] == shape for key, shape in small.items())
    extra_blocks = {re.match(r"mod4\.block(\d+)\.", key).group(1) for key in set(large) - set(small)}
    assert extra_blocks == {str(n) for n in range(7, 24)}


def test_stem_options_and_downsampling():
    """input_3x3 (the published default): three 3x3 convs; otherwise one 7x7. Strided 1x1 conv1 opens a module."""
    assert [name for name, _ in create_model("resnext50").mod1.named_children()] == \
        ["conv1", "bn1", "conv2", "bn2", "conv3", "pool"]
    plain_stem = create_model("resnext50", input_3x3=False, bn_mode="standard").mod1
    assert [name for name, _ in plain_stem.named_children()] == ["conv1", "pool"]
    assert plain_stem.conv1.kernel_size == (7, 7) and isinstance(plain_stem.pool, nn.MaxPool2d)
    block = create_model("resnext50").mod3.block1
    assert block.convs.conv1.stride == (2, 2) and block.proj_conv.stride == (2, 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_small_training_step_and_eval(backend):
    torch.manual_seed(0)
    model = create_model("resnext50", num_classes=6, backend=backend)
    out, dx, grads = train_step(model, torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 6) and torch.isfinite(out).all() and torch.isfinite(dx).all()
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 48, 48))).all()






@pytest.mark.parametrize("dilation,strides", [(1, [4, 8, 16, 32]), ((1, 1, 2, [2, 4, 8]), [4, 8, 8, 8])])
def test_features_only_shapes_follow_feature_info(dilation, strides):
    model = create_model("resnext50", features_only=True, dilation=dilation).eval()
    assert [info.stride for info in model.feature_info] == strides
    assert [info.channels for info in model.feature_info] == [256, 512, 1024, 2048]
    with torch.no_grad():
        features = model(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in features] == [(1, info.channels, 64 // info.stride, 64 // info.stride)
                                                  for info in model.feature_info]


def test_features_only_stage_outputs_are_not_overwritten():
    """Later in-place norms must not write over a stage output already handed out: compare with the plain net."""
    torch.manual_seed(0)
    features = create_model("resnext50", features_only=True).eval().double()  # float64: the same function
    plain = create_model("resnext50", features_only=True, bn_mode="standard", memory_efficient=False).eval().double()
    plain.load_state_dict(convert_norm(copy.deepcopy(features), "standard").state_dict())
    x = torch.randn(1, 3, 64, 64).double()
    with torch.no_grad():
        for stage, (ours, expected) in enumerate(zip(features(x), plain(x), strict=True)):
            assert_same_function(ours, expected, f"stage {stage}", float64_tol(features))


def test_per_block_dilation():
    model = create_model("resnext50", dilation=(1, 1, 2, [2, 4, 8]))
    assert [block.convs.conv2.dilation for block in model.mod5] == [(2, 2), (4, 4), (8, 8)]
    assert model.mod4.block1.convs.conv1.stride == (1, 1)


def test_bad_input_gives_clear_errors():
    with pytest.raises(UnknownNameError) as unknown:
        create_model("resnxt101")
    assert "resnext101" in unknown.value.suggestions
    with pytest.raises(InvalidArgumentError, match="num_classes"):
        create_model("resnext50", num_classes=-2)
    with pytest.raises(InvalidArgumentError, match="dilation"):
        create_model("resnext50", dilation=(1, 2))
    with pytest.raises(InvalidArgumentError, match="3 blocks"):
        create_model("resnext50", dilation=(1, 1, 1, [2, 2]))
    with pytest.raises(InvalidArgumentError, match="groups"):
        create_model("resnext50", groups=3)
    with pytest.raises(InvalidArgumentError, match="expects input"):
        create_model("resnext50").eval()(torch.randn(1, 4, 32, 32))
