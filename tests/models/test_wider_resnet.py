"""Wide ResNet 16/20/38 and A2 variants: construction, the dilated segmentation body, a small training step per
backend, features_only, bad input."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from support.backends import BACKENDS

from iabn_zoo.errors import InvalidArgumentError, UnknownNameError
from iabn_zoo.factory import create_model, list_models
from iabn_zoo.layers.pooling import LeanMaxPool2d

STRUCTURES = {"wider_resnet16": (1, 1, 1, 1, 1, 1), "wider_resnet20": (1, 1, 1, 3, 1, 1),
              "wider_resnet38": (3, 3, 6, 3, 1, 1)}
ARCHS = sorted(STRUCTURES) + sorted(f"{arch}_a2" for arch in STRUCTURES)
CHANNELS = [128, 256, 512, 1024, 2048, 4096]
VISTAS_MANIFEST = Path(__file__).parent / "manifests" / "wider_resnet38_deeplab3_vistas.json"


def layout(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(key, tuple(value.shape)) for key, value in model.state_dict().items()]


def blocks_per_module(model: nn.Module) -> tuple[int, ...]:
    return tuple(len(getattr(model, f"mod{index}")) for index in range(2, 8))


def test_every_wider_resnet_is_registered():
    assert set(ARCHS) <= set(list_models("wider_resnet*"))


@pytest.mark.parametrize("arch", ARCHS)
def test_full_size_construction(arch):
    model = create_model(arch)
    assert blocks_per_module(model) == STRUCTURES[arch.removesuffix("_a2")]
    pools = [name for name, module in model.named_children() if isinstance(module, LeanMaxPool2d)]
    assert pools == (["pool2", "pool3"] if arch.endswith("_a2") else ["pool2", "pool3", "pool4", "pool5", "pool6"])
    dropouts = [(name.split(".")[0], m.p) for name, m in model.named_modules() if isinstance(m, nn.Dropout2d)]
    if arch.endswith("_a2"):  # one per block of mod6 and mod7, before the last convolution
        assert dropouts == [("mod6", 0.3), ("mod7", 0.5)]
        assert list(dict(model.mod7.block1.convs.named_children()))[-2:] == ["dropout", "conv3"]
    else:
        assert dropouts == []
    assert model.get_classifier().weight.shape == (1000, 4096)


def test_a2_and_smaller_variants_share_the_wider_resnet38_layout():
    """A2 changes strides, pooling and dropout, never parameters; 16 and 20 hold a subset of 38's blocks."""
    full = dict(layout(create_model("wider_resnet38")))
    assert layout(create_model("wider_resnet38_a2")) == list(full.items())
    for arch in ("wider_resnet16", "wider_resnet20"):
        assert all(full.get(key) == shape for key, shape in layout(create_model(arch)))


def test_dilated_a2_body_has_the_vistas_checkpoint_keys():
    """The segmentation body: wider_resnet38_a2(dilation=True, num_classes=0) = the checkpoint's `body.*` entries."""
    entries = json.loads(VISTAS_MANIFEST.read_text())
    body = [(entry["key"].removeprefix("body."), tuple(entry["shape"])) for entry in entries
            if entry["key"].startswith("body.")]
    assert layout(create_model("wider_resnet38_a2", dilation=True, num_classes=0)) == body


@pytest.mark.parametrize("arch,options,strides", [
    ("wider_resnet16", {}, [2, 4, 8, 16, 32, 32]),
    ("wider_resnet16_a2", {}, [2, 4, 8, 16, 32, 32]),
    ("wider_resnet16_a2", {"dilation": True}, [2, 4, 8, 8, 8, 8]),
])
def test_features_only_shapes_follow_feature_info(arch, options, strides):
    model = create_model(arch, features_only=True, **options).eval()
    assert [info.stride for info in model.feature_info] == strides
    assert [info.channels for info in model.feature_info] == CHANNELS
    with torch.no_grad():
        features = model(torch.randn(1, 3, 32, 32))
    assert [tuple(f.shape) for f in features] == [(1, info.channels, 32 // info.stride, 32 // info.stride)
                                                  for info in model.feature_info]


def test_dilated_a2_dilations():
    model = create_model("wider_resnet38_a2", dilation=True)
    assert model.mod4.block1.convs.conv1.stride == (2, 2)
    assert [getattr(model, f"mod{i}").block1.convs.conv2.dilation for i in (4, 5, 6, 7)] == \
        [(1, 1), (2, 2), (4, 4), (4, 4)]
    assert model.mod6.block1.convs.conv1.stride == (1, 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_small_training_step_and_eval(backend):
    torch.manual_seed(0)
    model = create_model("wider_resnet16_a2", num_classes=3, backend=backend)
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    out = model(x)
    out.backward(torch.randn(out.shape))
    assert out.shape == (2, 3) and torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        first, second = model(torch.ones(1, 3, 32, 32)), model(torch.ones(1, 3, 32, 32))
    assert torch.equal(first, second)  # no dropout in eval mode


def test_bad_input_gives_clear_errors():
    with pytest.raises(UnknownNameError) as unknown:
        create_model("wider_resnet39")
    assert "wider_resnet38" in unknown.value.suggestions
    with pytest.raises(InvalidArgumentError, match="num_classes"):
        create_model("wider_resnet16", num_classes=-1)
    with pytest.raises(InvalidArgumentError, match="dilation"):
        create_model("wider_resnet16_a2", dilation=2)
    with pytest.raises(InvalidArgumentError, match="expects input"):
        create_model("wider_resnet16").eval()(torch.randn(1, 3, 32))
