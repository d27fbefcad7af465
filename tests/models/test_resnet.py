"""ResNet v1 (18/34/50/101/152): construction, a small training step per backend, features_only, bad input."""


import pytest
import torch
import torch.nn as nn
from support.backends import BACKENDS
from support.numerics import train_step

from iabn_zoo.errors import InvalidArgumentError, UnknownNameError
from iabn_zoo.factory import create_model, list_models

# Parameter counts of the same networks in torchvision (post-activation blocks, 1x1 projections with BN):
# norm layers and convolutions are the same, so the counts must agree.
TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
                      "resnet101": 44_549_160, "resnet152": 60_192_808}






def test_every_resnet_is_registered():
    assert {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"} <= set(list_models("resnet*"))


@pytest.mark.parametrize("arch", sorted(TORCHVISION_PARAMS))
def test_full_size_construction(arch):
    model = create_model(arch)
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMS[arch]
    keys = model.state_dict().keys()
    assert not any(key.startswith("bn_out") for key in keys)  # v1 ends with the last block, no final norm
    assert model.get_classifier().weight.shape == (1000, model.num_features)


def test_downsampling_sits_where_the_authors_put_it():
    """Bottleneck: stride on the 3x3 conv; basic: on conv1; projection shortcut with its own identity norm."""
    bottleneck = create_model("resnet50").mod3.block1
    assert bottleneck.convs.conv1.stride == (1, 1) and bottleneck.convs.conv2.stride == (2, 2)
    assert bottleneck.proj_conv.stride == (2, 2) and bottleneck.proj_bn.activation == "identity"
    basic = create_model("resnet18").mod3.block1
    assert basic.convs.conv1.stride == (2, 2) and basic.convs.conv2.stride == (1, 1)
    assert not hasattr(create_model("resnet18").mod2.block1, "proj_conv")  # 64 -> 64 at stride 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_small_training_step_and_eval(backend):
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=7, backend=backend)
    out, dx, grads = train_step(model, torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7) and torch.isfinite(out).all() and torch.isfinite(dx).all()
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert int(model.mod2.block1.convs.bn1.num_batches_tracked) == 1
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 40, 40))).all()






@pytest.mark.parametrize("dilation,strides,has_pool", [
    (1, [4, 8, 16, 32], True),
    ((1, 1, 2, 4), [4, 8, 8, 8], True),
    ((2, 2, 2, 2), [2, 2, 2, 2], False),
])
def test_features_only_shapes_follow_feature_info(dilation, strides, has_pool):
    model = create_model("resnet18", features_only=True, dilation=dilation).eval()
    assert [info.stride for info in model.feature_info] == strides
    assert hasattr(model.mod1, "pool1") == has_pool
    assert not hasattr(model, "classifier")
    with torch.no_grad():
        features = model(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in features] == [(1, info.channels, 64 // info.stride, 64 // info.stride)
                                                  for info in model.feature_info]


def test_dilated_blocks_use_the_module_dilation():
    model = create_model("resnet50", dilation=(1, 1, 2, 4))
    assert model.mod5.block3.convs.conv2.dilation == (4, 4) and model.mod5.block1.convs.conv2.stride == (1, 1)
    assert model.mod4.block1.convs.conv2.dilation == (2, 2)


def test_reset_classifier_and_no_classifier():
    model = create_model("resnet18", num_classes=3).eval()
    model.reset_classifier(10)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    headless = create_model("resnet18", num_classes=0).eval()
    assert isinstance(headless.get_classifier(), nn.Identity)
    with torch.no_grad():
        assert headless(torch.randn(1, 3, 32, 32)).shape == (1, 512)


def test_bad_input_gives_clear_errors():
    with pytest.raises(UnknownNameError) as unknown:
        create_model("resnet51")
    assert "resnet50" in unknown.value.suggestions and "resnet50" in str(unknown.value)
    with pytest.raises(InvalidArgumentError, match="num_classes"):
        create_model("resnet18", num_classes=-1)
    with pytest.raises(InvalidArgumentError, match="dilation"):
        create_model("resnet18", dilation=(1, 2))
    with pytest.raises(InvalidArgumentError, match=r"expects input of shape \(N, 3, H, W\)"):
        create_model("resnet18").eval()(torch.randn(1, 1, 32, 32))
