"""The Vistas segmentation network: the checkpoint's body/head/cls layout at full size with one small forward,
then a small-body network for train/eval steps, inference pooling, classifier reset, features_only and bad input."""

import copy
import json
from pathlib import Path

import pytest
import torch
from support.backends import BACKENDS
from support.numerics import assert_differs, assert_same_function, float64_tol

from iabn_zoo.errors import InvalidArgumentError
from iabn_zoo.factory import create_model
from iabn_zoo.layers import convert_norm, make_norm_act
from iabn_zoo.models.deeplab import DeepLabV3Head
from iabn_zoo.models.densenet import DenseNet
from iabn_zoo.models.segmentation import SegmentationNet

MANIFEST = Path(__file__).parent / "manifests" / "wider_resnet38_deeplab3_vistas.json"


@pytest.fixture(scope="module")
def vistas_net():
    torch.manual_seed(0)
    return create_model("wider_resnet38_a2_deeplab3")


def small_net(bn_mode="inplace", backend=None, num_classes=5, pooling_size=3, features_only=False):
    """Dilated (output stride 8) narrow DenseNet body + a narrow DeepLabV3 head."""
    torch.manual_seed(0)
    norm_act = make_norm_act(bn_mode, backend=backend)
    body = DenseNet((1, 1, 1, 1), norm_act, growth=4, dilation=(1, 1, 2, 4), num_classes=0)
    head = DeepLabV3Head(body.num_features, 6, 6, dilations=(1, 2, 3), norm_act=norm_act, pooling_size=pooling_size)
    return SegmentationNet(body, head, num_classes, features_only=features_only)


def test_full_size_layout_is_the_vistas_checkpoint(vistas_net):
    expected = [(entry["key"], entry["shape"]) for entry in json.loads(MANIFEST.read_text())]
    ours = [(key, list(value.shape)) for key, value in vistas_net.state_dict().items()]
    assert ours == expected
    assert {key.split(".")[0] for key, _ in ours} == {"body", "head", "cls"}
    assert vistas_net.head.pooling_size == (84, 84) and vistas_net.num_classes == 65
    assert vistas_net.body.mod7.block1.convs.conv2.dilation == (4, 4), "the body is the dilated WRN38-A2"


def test_full_size_forward_gives_logits_at_one_eighth(vistas_net):
    vistas_net.eval()
    with torch.no_grad():
        logits = vistas_net(torch.randn(1, 3, 20, 28))
    assert logits.shape == (1, 65, 3, 4)  # ceil(20 / 8), ceil(28 / 8)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bn_mode", ["standard", "inplace"])
def test_small_network_trains_and_predicts(bn_mode, backend):
    model = small_net(bn_mode, backend)
    x = torch.randn(2, 3, 48, 40)
    for training in (True, False):
        model.train(training)
        model.zero_grad()
        logits = model(x)
        assert logits.shape == (2, 5, 6, 5)
        torch.nn.functional.cross_entropy(logits, torch.randint(0, 5, (2, 6, 5))).backward()
        for name in ("cls.weight", "head.red_conv.weight", "body.mod2.convs1.0.conv.weight"):
            assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_inference_pooling_window_changes_the_context_only_on_large_maps():
    model = small_net(pooling_size=3).eval().double()
    global_pool = copy.deepcopy(model)
    global_pool.head.set_pooling_size(None)
    with torch.no_grad():
        large = torch.randn(1, 3, 64, 64).double()  # 8x8 map: 3x3 windows differ from the whole-map mean
        assert_differs(model(large), global_pool(large), 1e-4, "logits of 3x3 windows and of the whole-map mean")
        small = torch.randn(1, 3, 24, 24).double()  # 3x3 map: the window covers it
        assert_same_function(model(small), global_pool(small), "logits on a map the window covers",
                             float64_tol(model))


def test_converted_to_standard_bn_computes_the_same_logits():
    model = small_net("inplace").double()  # judged in float64, converted there too
    standard = convert_norm(copy.deepcopy(model), "standard")
    x = torch.randn(2, 3, 32, 32).double()
    for training in (True, False):
        model.train(training), standard.train(training)
        with torch.no_grad():
            assert_same_function(model(x), standard(x), f"logits ({'training' if training else 'eval'})",
                                 float64_tol(model))


def test_reset_and_get_classifier():
    model = small_net(num_classes=5)
    assert model.get_classifier() is model.cls and model.cls.out_channels == 5
    model.reset_classifier(9)
    assert model.cls.out_channels == 9 and model.num_classes == 9
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 9, 4, 4)
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), torch.nn.Identity)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 6, 4, 4), "no classifier: the head's features"


def test_features_only_returns_body_stages_and_head_output():
    model = small_net(features_only=True).eval()
    assert not hasattr(model, "cls")
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 32, 32))
    assert [m.shape[1] for m in maps] == [info.channels for info in model.feature_info]
    assert [32 // m.shape[-1] for m in maps] == [info.stride for info in model.feature_info] == [4, 8, 8, 8, 8]
    assert model.feature_info[-1].module == "head"


def test_bad_input_is_refused_before_building_the_body():
    for options, message in (({"pooling_size": 0}, "pooling_size must be a positive int"),
                             ({"pooling_size": -84}, "pooling_size must be a positive int"),
                             ({"num_classes": -1}, "num_classes must be an integer >= 0"),
                             ({"head_channels": 0}, "head_channels must be a positive integer")):
        with pytest.raises(InvalidArgumentError, match=message):
            create_model("wider_resnet38_a2_deeplab3", **options)
    model = small_net()
    with pytest.raises(InvalidArgumentError, match=r"\(N, 3, H, W\)"):
        model(torch.randn(1, 1, 32, 32))
