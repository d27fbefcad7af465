"""The front door: list_models, create_model's name resolution, options and errors."""

import pytest
import torch

import iabn_zoo as zoo
from iabn_zoo.factory import default_weights_for
from iabn_zoo.layers import ABN, InPlaceABN


def norm_layers(model):
    return [m for m in model.modules() if isinstance(m, ABN)]


def test_list_models_mixes_architectures_and_weights_and_filters():
    names = zoo.list_models()
    assert "resnext101" in names and "resnext101_ipabn_lr_512" in names and "densenet121" in names
    assert names == sorted(names)
    assert zoo.list_models("resnet*") == [n for n in names if n.startswith("resnet")]
    assert zoo.list_models("nothing-like-this*") == []


def test_list_models_pretrained_keeps_only_names_with_published_weights():
    pretrained = zoo.list_models(pretrained=True)
    assert set(zoo.list_weights()) <= set(pretrained)
    assert "resnext101" in pretrained and "wider_resnet38_a2_deeplab3" in pretrained
    assert "resnet18" not in pretrained and "densenet121" not in pretrained


def test_weights_name_without_pretrained_builds_the_published_configuration():
    standard = zoo.create_model("resnext101_stdbn_lr_256", num_classes=0)
    inplace = zoo.create_model("resnext101_ipabn_lr_512", num_classes=0)
    assert {type(m) for m in norm_layers(standard)} == {ABN}
    assert {type(m) for m in norm_layers(inplace)} == {InPlaceABN}
    assert standard.state_dict().keys() == inplace.state_dict().keys()


def test_sync_weights_build_sync_layers_unless_overridden():
    model = zoo.create_model("resnet34_ipabn_sync_lr_512", num_classes=0)
    assert all(m.bn_mode == "sync" for m in norm_layers(model))
    model = zoo.create_model("resnet34_ipabn_sync_lr_512", num_classes=0, bn_mode="standard")
    assert all(m.bn_mode == "standard" for m in norm_layers(model))


def test_architecture_pretrained_picks_its_best_published_weights():
    assert default_weights_for("resnext101").name == "resnext101_ipabn_lr_512"
    assert default_weights_for("wider_resnet38_a2_deeplab3").name == "wider_resnet38_deeplab3_vistas"
    with pytest.raises(zoo.InvalidArgumentError, match="no published weights"):
        zoo.create_model("resnet18", pretrained=True)


def test_num_classes_and_small_forward():
    model = zoo.create_model("resnet18", num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    assert model.get_classifier().out_features == 7


def test_unknown_name_suggests_close_architectures_and_weights():
    with pytest.raises(zoo.UnknownNameError) as caught:
        zoo.create_model("resnext101_ipabn_lr_51")
    assert isinstance(caught.value, KeyError)
    assert "resnext101_ipabn_lr_512" in caught.value.suggestions
    assert "Did you mean" in str(caught.value)
    with pytest.raises(KeyError, match="resnet50"):
        zoo.create_model("resnet05")


@pytest.mark.parametrize("options, message", [
    ({"num_classes": -1}, "num_classes"),
    ({"num_classes": 2.5}, "num_classes"),
    ({"bn_mode": "batch"}, "bn_mode must be one of"),
    ({"dilation": True}, "takes no argument 'dilation'"),
])
def test_bad_options_are_typed_errors_naming_the_problem(options, message):
    with pytest.raises(zoo.InvalidArgumentError, match=message):
        zoo.create_model("wider_resnet38", **options)


@pytest.mark.parametrize("arch", ["densenet121", "resnext50", "resnet18", "wider_resnet38_a2",
                                  "wider_resnet38_a2_deeplab3"])
def test_every_family_refuses_options_it_does_not_take(arch):
    with pytest.raises(zoo.InvalidArgumentError, match="takes no argument 'colour'"):
        zoo.create_model(arch, colour="blue")
