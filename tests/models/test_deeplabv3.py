"""DeepLabV3 on every zoo backbone: one constructor over the registry, output stride 8 or 16, the Vistas head."""

import math

import pytest
import torch
import torch.nn as nn

import iabn_zoo as zoo
from iabn_zoo.errors import InvalidArgumentError
from iabn_zoo.models import list_archs
from iabn_zoo.models.deeplabv3 import backbone_of
from iabn_zoo.models.segmentation import SegmentationNet
from iabn_zoo.train.optim import freeze, stage_modules

CLASSIFICATION_ARCHS = [name for name in list_archs() if not name.startswith("deeplabv3_")
                        and name != "wider_resnet38_a2_deeplab3"]


def deeplab(name="deeplabv3_resnet18", **options):
    torch.manual_seed(0)
    return zoo.create_model(name, backbone_weights=None, **options)


def test_every_classification_architecture_has_a_deeplabv3_built_by_one_constructor():
    names = list_archs("deeplabv3_*")
    assert names == sorted(f"deeplabv3_{arch}" for arch in CLASSIFICATION_ARCHS)
    assert len(names) >= 18 and {"deeplabv3_resnet18", "deeplabv3_resnext101", "deeplabv3_wider_resnet38_a2",
                                 "deeplabv3_densenet264"} <= set(names)
    assert all(backbone_of(name) == name.removeprefix("deeplabv3_") for name in names)
    assert backbone_of("resnet18") is None and backbone_of("wider_resnet38_a2_deeplab3") is None
    assert set(names) <= set(zoo.list_models())
    constructors = {zoo.models.get_arch(name).__code__ for name in names}
    assert len(constructors) == 1, "one constructor, not one function per family"


@pytest.mark.parametrize("output_stride", [8, 16])
def test_resnet18_logits_at_one_over_output_stride_ceil_sized(output_stride):
    model = deeplab(num_classes=5, output_stride=output_stride)
    for height, width in ((64, 64), (65, 47), (33, 90)):
        for training in (True, False):
            model.train(training)
            with torch.set_grad_enabled(training):
                logits = model(torch.randn(2, 3, height, width))
            assert logits.shape == (2, 5, math.ceil(height / output_stride), math.ceil(width / output_stride)), \
                f"{height}x{width} training={training}"
            assert torch.isfinite(logits).all()
    assert [info.stride for info in model.feature_info] == ([4, 8, 8, 8, 8] if output_stride == 8
                                                            else [4, 8, 16, 16, 16])


@pytest.mark.parametrize("name", sorted(f"deeplabv3_{arch}" for arch in CLASSIFICATION_ARCHS))
@pytest.mark.parametrize("output_stride", [8, 16])
def test_every_family_reaches_the_output_stride_on_the_meta_device(name, output_stride):
    with torch.device("meta"):
        model = zoo.create_model(name, num_classes=3, output_stride=output_stride, backbone_weights=None).eval()
        logits = model(torch.empty(1, 3, 64, 48))
    assert logits.shape == (1, 3, 64 // output_stride, 48 // output_stride)
    assert model.feature_info[-1].stride == output_stride and model.feature_info[-1].module == "head"
    assert model.head.map_convs[1].dilation == ((12, 12) if output_stride == 8 else (6, 6))
    assert {info.module.split(".")[0] for info in model.feature_info[:-1]} == {"body"}


def test_dilated_stages_keep_their_parameters_and_key_layout():
    """A dilated backbone is the same network with other strides and dilations: same keys, same shapes, so the
    classifier's weights load into it."""
    plain = zoo.create_model("resnet18", num_classes=0)
    for output_stride in (8, 16):
        body = deeplab(output_stride=output_stride).body
        assert [(k, v.shape) for k, v in body.state_dict().items()] == \
               [(k, v.shape) for k, v in plain.state_dict().items()]
    dilated = deeplab(output_stride=8).body
    assert dilated.mod4.block1.convs.conv2.dilation == (2, 2) and dilated.mod5.block2.convs.conv2.dilation == (4, 4)
    assert dilated.mod4.block1.convs.conv1.stride == (1, 1) and dilated.mod3.block1.convs.conv1.stride == (2, 2)


def test_wider_resnet_a2_output_stride_8_is_the_authors_dilated_layout():
    with torch.device("meta"):
        by_stride = zoo.create_model("wider_resnet38_a2", output_stride=8)
        by_switch = zoo.create_model("wider_resnet38_a2", dilation=True)
    assert str(by_stride) == str(by_switch)
    with pytest.raises(InvalidArgumentError, match="output_stride=16 or dilation=True"):
        zoo.create_model("wider_resnet38_a2", dilation=True, output_stride=16)


def test_state_dict_is_body_head_cls():
    model = deeplab(num_classes=7)
    keys = list(model.state_dict())
    assert {key.split(".")[0] for key in keys} == {"body", "head", "cls"}
    assert keys[-2:] == ["cls.weight", "cls.bias"] and model.cls.out_channels == 7
    assert not any(key.startswith("body.classifier") for key in keys)
    model.reset_classifier(3)
    assert model.get_classifier() is model.cls and model.cls.out_channels == 3 and model.num_classes == 3


def test_vistas_network_takes_output_stride_16():
    with torch.device("meta"):
        model = zoo.create_model("wider_resnet38_a2_deeplab3", output_stride=16, pooling_size=None).eval()
        logits = model(torch.empty(1, 3, 64, 96))
    assert logits.shape == (1, 65, 4, 6) and model.head.map_convs[1].dilation == (6, 6)


@pytest.mark.parametrize("name,options", [
    ("deeplabv3_resnet18", {"output_stride": 32}),
    ("deeplabv3_resnet18", {"output_stride": 4}),
    ("deeplabv3_resnet18", {"output_stride": "8"}),
    ("wider_resnet38_a2_deeplab3", {"output_stride": 32}),
    ("resnet18", {"output_stride": 12}),
])
def test_bad_output_stride_is_named(name, options):
    with pytest.raises(InvalidArgumentError, match="output_stride must be one of"):
        zoo.create_model(name, backbone_weights=None, **options) if name.startswith("deeplabv3") else \
            zoo.create_model(name, **options)


@pytest.mark.parametrize("options,match", [
    ({"head_channels": 0}, "head_channels"),
    ({"num_classes": -1}, "num_classes"),
    ({"pooling_size": 0}, "pooling_size"),
    ({"backbone_kwargs": {"bn_mode": "standard"}}, "backbone_kwargs"),
    ({"dilation": 2}, "takes no argument 'dilation'"),
])
def test_bad_options_are_refused(options, match):
    with pytest.raises(InvalidArgumentError, match=match):
        deeplab(**options)


def test_freeze_stages_reaches_into_the_body():
    model = deeplab(num_classes=3)
    frozen = stage_modules(model, 2)  # the stem + mod2, and mod3
    body = model.body
    assert frozen == [body.mod1, body.mod2, body.mod3]
    assert stage_modules(model, len(model.feature_info)) == [model.body, model.head]
    freeze(frozen)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is None for m in frozen for p in m.parameters())
    assert all(p.grad is not None for p in body.mod4.parameters()) and model.cls.weight.grad is not None


def test_grad_checkpointing_gives_the_same_gradients():
    x = torch.randn(2, 3, 40, 40, dtype=torch.float64)
    grads = []
    for checkpointing in (False, True):
        model = deeplab(num_classes=3, bn_mode="standard").double().train()
        model.set_grad_checkpointing(checkpointing)
        assert model.body.grad_checkpointing is checkpointing
        model(x).square().sum().backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    worst = max(float((grads[0][k] - grads[1][k]).abs().max()) for k in grads[0])
    assert worst < 1e-10, f"gradients differ by {worst} with checkpointing"


def test_no_reference_cycle_keeps_the_network():
    import gc
    import weakref

    gc.disable()
    try:
        model = deeplab(num_classes=3)
        reference = weakref.ref(model)
        del model
        assert reference() is None, "a deeplabv3 network must be freed by reference counting"
    finally:
        gc.enable()


def test_is_a_segmentation_net():
    assert isinstance(deeplab(), SegmentationNet) and isinstance(deeplab().head, nn.Module)


def test_the_vistas_network_is_the_one_constructor_on_its_body():
    """`wider_resnet38_a2_deeplab3` is `deeplabv3("wider_resnet38_a2", ...)` with the published arguments: the same
    modules and state_dict layout (the authors' keys: test_manifests) as deeplabv3_wider_resnet38_a2 at 65
    classes; both are segmentation architectures in the registry, the classification families are not."""
    from iabn_zoo.models import arch_task
    from iabn_zoo.models.deeplabv3 import deeplabv3

    with torch.device("meta"):
        vistas = zoo.create_model("wider_resnet38_a2_deeplab3")
        built = deeplabv3("wider_resnet38_a2", num_classes=65, pooling_size=84)
        registered = zoo.create_model("deeplabv3_wider_resnet38_a2", num_classes=65, pooling_size=84,
                                      backbone_weights=None)
    layouts = [[(key, tuple(value.shape)) for key, value in model.state_dict().items()]
               for model in (vistas, built, registered)]
    assert layouts[0] == layouts[1] == layouts[2]
    assert str(vistas) == str(built) and vistas.head.pooling_size == (84, 84) and vistas.num_classes == 65
    assert {key.split(".")[0] for key, _ in layouts[0]} == {"body", "head", "cls"}
    assert arch_task("wider_resnet38_a2_deeplab3") == arch_task("deeplabv3_resnet18") == "segmentation"
    assert {arch_task(name) for name in CLASSIFICATION_ARCHS if name != "wider_resnet38_a2_deeplab3"} == \
        {"classification"}
