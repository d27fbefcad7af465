"""Whole networks compute one function whatever runs their norm layers: both backends, and inplace converted to
standard, for the pre-activation (ResNeXt) and post-activation (ResNet v1, fused residual) families."""

import copy

import pytest
import torch
from network_checks import assert_close_scaled, train_step

from iabn_zoo.factory import create_model
from iabn_zoo.norm_act import InPlaceABN, convert_norm

ARCHS = ("resnet18", "resnext50")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("training", [True, False])
def test_backends_compute_the_same_function(arch, training):
    """In float64 (the compiled kernels round some steps to float32, hence 1e-5): in float32, the training-mode
    gradients of a deep net on a tiny batch are mostly rounding noise."""
    torch.manual_seed(0)
    native = create_model(arch, num_classes=5, backend="native").double().train(training)
    torch_backend = create_model(arch, num_classes=5, backend="torch").double().train(training)
    torch_backend.load_state_dict(native.state_dict())
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    (out_a, dx_a, grads_a), (out_b, dx_b, grads_b) = train_step(native, x), train_step(torch_backend, x)
    assert_close_scaled(out_a, out_b, tol=1e-5)
    assert_close_scaled(dx_a, dx_b, tol=1e-5)
    for name in grads_a:
        assert_close_scaled(grads_a[name], grads_b[name], tol=1e-5, name=name)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("training", [True, False])
def test_inplace_model_converted_to_standard_computes_the_same(arch, training):
    torch.manual_seed(0)
    inplace = create_model(arch, num_classes=5).train(training)
    standard = convert_norm(copy.deepcopy(inplace), "standard")
    assert not any(isinstance(m, InPlaceABN) for m in standard.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_close_scaled(inplace(x.clone()), standard(x.clone()), tol=1e-5)
