"""Whole networks compute one function whatever runs their norm layers: both backends, and inplace converted to
standard, for the pre-activation (ResNeXt) and post-activation (ResNet v1, fused residual) families."""

import copy

import pytest
import torch
from support.backends import needs_native
from support.numerics import assert_same_function, assert_within_noise, float64_tol, noise_floor, train_step

from iabn_zoo.factory import create_model
from iabn_zoo.layers import InPlaceABN, convert_norm

ARCHS = ("resnet18", "resnext50")


@needs_native
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("training", [True, False])
def test_backends_compute_the_same_function(arch, training):
    """Judged in float64: in float32 the training-mode gradients of a deep net on a tiny batch are mostly
    rounding noise, different on every CPU."""
    torch.manual_seed(0)
    native = create_model(arch, num_classes=5, backend="native").double().train(training)
    torch_backend = create_model(arch, num_classes=5, backend="torch").double().train(training)
    torch_backend.load_state_dict(native.state_dict())
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    (out_a, dx_a, grads_a), (out_b, dx_b, grads_b) = train_step(native, x), train_step(torch_backend, x)
    assert_same_function(out_a, out_b, "output")
    assert_same_function(dx_a, dx_b, "input gradient")
    for name in grads_a:
        assert_same_function(grads_a[name], grads_b[name], name)


def forward_both(inplace, standard, x):
    with torch.no_grad():
        return inplace(x.clone()), standard(x.clone())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("training", [True, False])
def test_inplace_model_converted_to_standard_computes_the_same(arch, training):
    """Exact in float64; in float32 the in-place network lands as close to float64 as standard BN itself."""
    torch.manual_seed(0)
    inplace = create_model(arch, num_classes=5).train(training)
    standard = convert_norm(copy.deepcopy(inplace), "standard")
    assert not any(isinstance(m, InPlaceABN) for m in standard.modules())
    x = torch.randn(2, 3, 64, 64)
    # converted in float64: a float32 conversion would round |w| + eps before the float64 comparison sees it
    inplace64 = copy.deepcopy(inplace).double()
    standard64 = convert_norm(copy.deepcopy(inplace64), "standard")
    out_inplace64, out_standard64 = forward_both(inplace64, standard64, x.double())
    assert_same_function(out_inplace64, out_standard64, "output", float64_tol(inplace64))
    out_inplace32, out_standard32 = forward_both(inplace, standard, x)
    floor = noise_floor(out_standard32, out_standard64)
    assert_within_noise(out_inplace32, out_standard64, floor, "float32 in-place output")
