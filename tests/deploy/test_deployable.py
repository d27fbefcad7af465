"""The deployable copy: standard modules only, the same function as the network (judged in float64), the network
left as it was, and bf16 copies as accurate as bf16 allows (judged against float64 with a measured floor)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from support.numerics import assert_same_function, scaled_difference
from support.small_networks import SMALL_FAMILIES, resnet

from iabn_zoo.errors import InvalidArgumentError
from iabn_zoo.layers import ABN, LeanMaxPool2d, convert_norm
from iabn_zoo.models._deployable import AffineActivation, deployable_copy
from iabn_zoo.models._fast_eval import disable_fast_eval, is_fast_eval_enabled
from iabn_zoo.models import ZooModule
from iabn_zoo.models._base import GlobalAvgPool2d

STANDARD_MODULES = (nn.Conv2d, nn.Linear, nn.MaxPool2d, nn.AvgPool2d, nn.Identity, AffineActivation, GlobalAvgPool2d)


def images(batch: int = 2, size: int = 40, dtype: torch.dtype = torch.float32, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def own_layers(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The network with its norm-act layers running their own eval forward (no fast path), in `dtype`."""
    reference = copy.deepcopy(model).to(dtype)
    for module in reference.modules():
        if isinstance(module, ZooModule):
            disable_fast_eval(module)
    return reference.eval()


@pytest.mark.parametrize("family", sorted(SMALL_FAMILIES))
def test_the_copy_computes_the_same_function_in_float64(family):
    model = SMALL_FAMILIES[family]()
    deployable = deployable_copy(model, torch.float64)
    x = images(dtype=torch.float64)
    with torch.no_grad():
        assert_same_function(deployable(x.clone()), own_layers(model, torch.float64)(x.clone()), family)


@pytest.mark.parametrize("family", sorted(SMALL_FAMILIES))
def test_the_copy_holds_standard_modules_only_and_leaves_the_network_alone(family):
    model = SMALL_FAMILIES[family]()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    deployable = deployable_copy(model)
    leaves = [m for m in deployable.modules() if not list(m.children())]
    odd = sorted({type(m).__name__ for m in leaves if not isinstance(m, STANDARD_MODULES)})
    assert not odd, f"{family}: non-standard modules in the deployable copy: {odd}"
    assert not any(isinstance(m, (ABN, LeanMaxPool2d)) for m in deployable.modules())
    assert not any("forward" in m.__dict__ for m in deployable.modules()), "a fast-eval override survived"
    assert not any(p.requires_grad for p in deployable.parameters())
    deployable.eval()  # eval() of a zoo network would reinstall the fast path unless it is off for good
    assert not is_fast_eval_enabled(deployable) and not any("forward" in m.__dict__ for m in deployable.modules())
    folded = sum(isinstance(m, AffineActivation) and m.scale is None for m in deployable.modules())
    biased = sum(isinstance(m, nn.Conv2d) and m.bias is not None for m in deployable.modules())
    segmentation = family.startswith("segmentation")  # its classifier is a 1x1 conv with bias; its body folds none
    assert folded == biased - segmentation and (folded > 0 or segmentation), (folded, biased)
    assert any(isinstance(m, ABN) for m in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_network_in_training_mode_is_copied_with_its_eval_function():
    model = resnet("inplace").train()
    deployable = deployable_copy(model, torch.float64)
    assert model.training and not deployable.training
    with torch.no_grad():
        assert_same_function(deployable(images(dtype=torch.float64)),
                             own_layers(model, torch.float64)(images(dtype=torch.float64)))


def test_bad_input_is_refused():
    with pytest.raises(InvalidArgumentError, match="nn.Module"):
        deployable_copy("resnet18")
    with pytest.raises(InvalidArgumentError, match="floating point"):
        deployable_copy(resnet(), torch.int8)
    conv = nn.Conv2d(3, 3, 1)
    with pytest.raises(InvalidArgumentError, match="more than one place"):
        deployable_copy(nn.Sequential(conv, nn.ReLU(), conv))


@pytest.mark.parametrize("family", ["resnet_basic_inplace", "resnext_sync_elu", "densenet_inplace_identity"])
def test_bf16_copy_is_as_accurate_as_bf16_allows(family):
    """bf16 against float64, next to the floor: the same network converted the standard way (standard BN layers,
    `model.to(torch.bfloat16)`, no folding). Ours folds in float64 and rounds each weight once, keeps the classifier
    in float32: at least as close, and within the issue's 1e-2."""
    model = SMALL_FAMILIES[family]()
    x = images(batch=4, size=48)
    with torch.no_grad():
        reference = deployable_copy(model, torch.float64)(x.double())
        ours = deployable_copy(model, torch.bfloat16)(x.to(torch.bfloat16).contiguous(
            memory_format=torch.channels_last)).float()
        standard = own_layers(convert_norm(copy.deepcopy(model), "standard"), torch.bfloat16)
        floor = scaled_difference(standard(x.to(torch.bfloat16)).float(), reference)
        fp32_floor = scaled_difference(own_layers(model, torch.float32)(x), reference)
    error = scaled_difference(ours, reference)
    assert ours.dtype == torch.float32
    assert error <= 1.5 * floor and error <= 1e-2, (
        f"{family}: bf16 copy off float64 by {error:.3g} (scaled); standard bf16 {floor:.3g}, fp32 {fp32_floor:.3g}")
