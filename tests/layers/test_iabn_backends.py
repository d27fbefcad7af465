"""Both InPlace-ABN backends against a float64 reference written with plain autograd, and what backward keeps.

Exactness is judged in float64 (the compiled kernels within FLOAT64_TOL, the torch backend within
PURE_FLOAT64_TOL); float32 against the noise floor of standard BN measured in the same test."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.backends import BACKENDS
from support.numerics import (
    FLOAT64_TOL,
    PURE_FLOAT64_TOL,
    assert_as_close_as_standard,
    assert_same_function,
    inversion_condition,
)

from iabn_zoo.layers import ABN, make_norm_act

ACTIVATIONS = [("leaky_relu", 0.01), ("elu", 1.0), ("identity", 0.0), ("leaky_relu", 0.3), ("elu", 0.5)]
GRADIENT_NAMES = ("input gradient", "weight gradient", "bias gradient", "residual gradient")


def float64_tol(backend):
    """The compiled kernels keep activation_param, eps and momentum in float32 (~1e-8 here); the torch backend is
    float64 throughout."""
    return FLOAT64_TOL if backend == "native" else PURE_FLOAT64_TOL


def activate(z, activation, param):
    if activation == "leaky_relu":
        return F.leaky_relu(z, param)
    if activation == "elu":
        return F.elu(z, param)
    return z


def reference(x, weight, bias, mean, var, activation, param, eps=1e-5, residual=None):
    """act(xhat * (|w| + eps) + b [+ residual]) with plain differentiable torch ops."""
    xhat = (x - mean.view(1, -1, *[1] * (x.dim() - 2))) / torch.sqrt(var.view(1, -1, *[1] * (x.dim() - 2)) + eps)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    z = xhat * (weight.abs() + eps).view(shape) + bias.view(shape)
    if residual is not None:
        z = z + residual
    return activate(z, activation, param)


def batch_stats(x):
    dims = (0,) + tuple(range(2, x.dim()))
    mean = x.mean(dims)
    var = ((x - mean.view(1, -1, *[1] * (x.dim() - 2))) ** 2).mean(dims)
    return mean, var


def random_layer(backend, channels, activation, param, dtype=torch.float64, generator=None):
    layer = make_norm_act("inplace", activation, param, backend=backend)(channels).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(channels, generator=generator, dtype=dtype))  # includes negative weights
        layer.bias.copy_(torch.randn(channels, generator=generator, dtype=dtype))
        layer.running_mean.copy_(torch.randn(channels, generator=generator, dtype=dtype))
        layer.running_var.copy_(torch.rand(channels, generator=generator, dtype=dtype) + 0.5)
    return layer


def run_layer(layer, x, g, residual=None):
    """Output and the gradients of input, weight, bias (and residual) of sum(layer(x) * g)."""
    x = x.clone().requires_grad_()
    res = residual.clone().requires_grad_() if residual is not None else None
    y = layer(x * 1.0, res)  # x * 1 is a non-leaf that the layer may overwrite
    (y * g).sum().backward()
    grads = [x.grad, layer.weight.grad, layer.bias.grad] + ([res.grad] if res is not None else [])
    return y.detach(), grads


def run_reference(layer, x, g, training, residual=None):
    x = x.clone().requires_grad_()
    weight = layer.weight.detach().clone().requires_grad_()
    bias = layer.bias.detach().clone().requires_grad_()
    res = residual.clone().requires_grad_() if residual is not None else None
    mean, var = batch_stats(x) if training else (layer.running_mean.clone(), layer.running_var.clone())
    y = reference(x, weight, bias, mean, var, layer.activation, layer.activation_param, layer.eps, res)
    (y * g).sum().backward()
    grads = [x.grad, weight.grad, bias.grad] + ([res.grad] if res is not None else [])
    return y.detach(), grads


def run_standard(layer, x, g):
    """The same function the standard way: F.batch_norm (batch statistics) with weight |w| + eps, then the
    activation; output and the gradients of input, weight and bias of sum(y * g)."""
    x = x.clone().requires_grad_()
    weight = layer.weight.detach().clone().requires_grad_()
    bias = layer.bias.detach().clone().requires_grad_()
    z = F.batch_norm(x, None, None, weight.abs() + layer.eps, bias, True, 0.0, layer.eps)
    y = activate(z, layer.activation, layer.activation_param)
    (y * g).sum().backward()
    return y.detach(), [x.grad, weight.grad, bias.grad]


shapes = st.lists(st.integers(1, 5), min_size=0, max_size=3).flatmap(
    lambda spatial: st.tuples(st.integers(1, 4), st.integers(1, 5), st.just(tuple(spatial))))


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=shapes, act=st.sampled_from(ACTIVATIONS), training=st.booleans(), use_residual=st.booleans(),
       seed=st.integers(0, 2**16))
def test_matches_reference_on_random_shapes(backend, shape, act, training, use_residual, seed):
    n, c, spatial = shape
    full_shape = (n, c) + spatial
    if training and n * torch.Size(spatial).numel() < 2:
        n, full_shape = 2, (2, c) + spatial
    gen = torch.Generator().manual_seed(seed)
    layer = random_layer(backend, c, *act, generator=gen).train(training)
    x = torch.randn(full_shape, generator=gen, dtype=torch.float64) * 3 + 1
    g = torch.randn(full_shape, generator=gen, dtype=torch.float64)
    residual = torch.randn(full_shape, generator=gen, dtype=torch.float64) if use_residual else None
    mean0, var0 = layer.running_mean.clone(), layer.running_var.clone()
    expected_y, expected_grads = run_reference(layer, x, g, training, residual)
    y, grads = run_layer(layer, x, g, residual)
    tol = float64_tol(backend)
    assert_same_function(y, expected_y, "output", tol)
    for got, want, name in zip(grads, expected_grads, GRADIENT_NAMES):
        assert_same_function(got, want, name, tol)
    if training:
        count = x.numel() // c
        mean, var = batch_stats(x)
        assert_same_function(layer.running_mean, 0.9 * mean0 + 0.1 * mean, "running_mean", tol)
        assert_same_function(layer.running_var, 0.9 * var0 + 0.1 * var * count / (count - 1), "running_var", tol)
        assert int(layer.num_batches_tracked) == 1
    else:
        assert torch.equal(layer.running_mean, mean0) and torch.equal(layer.running_var, var0), (
            "eval mode changed the running statistics")
        assert int(layer.num_batches_tracked) == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(7, 3), (1, 4, 9), (3, 2, 5, 7), (1, 3, 3, 5), (2, 2, 3, 1, 5)],
                         ids=["2d", "3d-batch1", "4d-odd", "4d-batch1", "5d"])
def test_float32_close_to_float64_reference(backend, shape):
    """As close to float64 as float32 standard BN, measured here. Every result rests on per-channel sums over the
    batch (their rounding depends on the summation order), and the gradients on xhat recovered from the output
    (whose rounding the division by |w| + eps amplifies: `inversion_condition`)."""
    gen = torch.Generator().manual_seed(sum(shape))
    layer = random_layer(backend, shape[1], "leaky_relu", 0.01, dtype=torch.float32, generator=gen)
    x = torch.randn(shape, generator=gen)
    g = torch.randn(shape, generator=gen)
    reference_layer = random_layer(backend, shape[1], "leaky_relu", 0.01)
    reference_layer.load_state_dict(layer.state_dict())
    expected_y, expected_grads = run_reference(reference_layer, x.double(), g.double(), True)
    standard_y, standard_grads = run_standard(layer, x, g)
    y, grads = run_layer(layer, x, g)
    assert y.dtype == torch.float32
    count = x.numel() // shape[1]
    assert_as_close_as_standard(y, standard_y, expected_y, "float32 output", terms=count)
    condition = inversion_condition(layer.weight, layer.bias, layer.eps)
    for got, standard, want, name in zip(grads, standard_grads, expected_grads, GRADIENT_NAMES):
        assert_as_close_as_standard(got, standard, want, f"float32 {name}", factor=8 * condition, terms=count)


@pytest.mark.parametrize("backend", BACKENDS)
def test_output_overwrites_input(backend):
    layer = make_norm_act("inplace", backend=backend)(4)
    x = torch.randn(2, 4, 3, 3)
    y = layer(x)
    assert y.data_ptr() == x.data_ptr()
    assert layer.backend == backend


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ["leaky_relu", "elu", "identity"])
def test_fused_residual_equals_plain_formulation(backend, activation):
    """layer(x, r) == act(bn(x) + r) built from an identity layer, an addition and the activation."""
    gen = torch.Generator().manual_seed(3)
    fused = random_layer(backend, 5, activation, 0.2, generator=gen)
    plain = random_layer(backend, 5, "identity", 0.0, generator=gen)
    plain.load_state_dict(fused.state_dict())
    x = torch.randn(3, 5, 4, 3, generator=gen, dtype=torch.float64)
    r = torch.randn(3, 5, 4, 3, generator=gen, dtype=torch.float64)
    g = torch.randn(3, 5, 4, 3, generator=gen, dtype=torch.float64)
    act = {"leaky_relu": lambda t: F.leaky_relu(t, 0.2), "elu": lambda t: F.elu(t, 0.2), "identity": lambda t: t}
    x1, r1 = x.clone().requires_grad_(), r.clone().requires_grad_()
    y_fused = fused(x1 * 1.0, r1)
    (y_fused * g).sum().backward()
    x2, r2 = x.clone().requires_grad_(), r.clone().requires_grad_()
    y_plain = act[activation](plain(x2 * 1.0) + r2)
    (y_plain * g).sum().backward()
    tol = float64_tol(backend)
    assert_same_function(y_fused, y_plain, "output", tol)
    for a, b, name in [(x1.grad, x2.grad, "input gradient"), (r1.grad, r2.grad, "residual gradient"),
                       (fused.weight.grad, plain.weight.grad, "weight gradient"),
                       (fused.bias.grad, plain.bias.grad, "bias gradient")]:
        assert_same_function(a, b, name, tol)
    assert_same_function(fused.running_var, plain.running_var, "running_var", tol)
    assert torch.equal(r, r1.detach()), "the residual must be left untouched"


def test_standard_mode_residual_matches_plain_formulation():
    layer = ABN(4, activation="relu").double()
    x, r = torch.randn(2, 4, 3, 3, dtype=torch.float64), torch.randn(2, 4, 3, 3, dtype=torch.float64)
    expected = F.relu(F.batch_norm(x, None, None, layer.weight, layer.bias, True, 0.1, layer.eps) + r)
    assert_same_function(layer(x.clone(), r), expected, "output", PURE_FLOAT64_TOL)


def saved_bytes(fn):
    """Bytes of distinct storages autograd keeps for backward while running `fn`, and their data pointers."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values()), storages


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_keeps_only_the_output(backend):
    shape = (4, 16, 12, 12)
    big = torch.Size(shape).numel() * 4
    conv = torch.nn.Conv2d(16, 16, 1)
    x = torch.randn(shape)
    iabn = make_norm_act("inplace", backend=backend)(16)
    standard = make_norm_act("standard")(16)
    outputs = []
    iabn_bytes, iabn_storages = saved_bytes(lambda: outputs.append(iabn(conv(x))))
    standard_bytes, _ = saved_bytes(lambda: standard(conv(x)))
    conv_bytes, _ = saved_bytes(lambda: conv(x))
    ours, theirs = iabn_bytes - conv_bytes, standard_bytes - conv_bytes
    assert big <= ours <= big + 4 * 16 * 8, "InPlace-ABN should keep one activation-sized tensor"
    assert theirs >= 2 * big, "standard BN + activation keeps its input and its output"
    assert outputs[0].untyped_storage().data_ptr() in iabn_storages


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_residual_keeps_output_and_callers_residual_only(backend):
    shape = (2, 8, 10, 10)
    big = torch.Size(shape).numel() * 4
    layer = make_norm_act("inplace", backend=backend)(8)
    x = torch.randn(shape, requires_grad=True)
    residual = torch.randn(shape, requires_grad=True)
    outputs = []
    total, storages = saved_bytes(lambda: outputs.append(layer(x * 2.0, residual)))
    big_storages = {ptr for ptr, nbytes in storages.items() if nbytes >= big}
    assert big_storages == {outputs[0].untyped_storage().data_ptr(), residual.untyped_storage().data_ptr()}
    assert total <= 2 * big + 4 * 8 * 8


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation,use_residual", [("identity", False), ("leaky_relu", True), ("elu", False)])
def test_backward_twice_with_retained_graph_gives_same_gradients(backend, activation, use_residual):
    """Backward must not spoil what it saved: the output it recomputes from stays intact."""
    layer = random_layer(backend, 3, activation, 0.1, generator=torch.Generator().manual_seed(5))
    x = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    residual = torch.randn(4, 3, 3, 3, dtype=torch.float64) if use_residual else None
    y = layer(x * 1.0, residual)
    kept = y.detach().clone()
    first = torch.autograd.grad(y, [x, layer.weight], torch.ones_like(y), retain_graph=True)
    second = torch.autograd.grad(y, [x, layer.weight], torch.ones_like(y) * 1.0)
    assert torch.equal(y.detach(), kept), "backward wrote over the output it recomputes from"
    for a, b in zip(first, second):  # the same computation on the same saved tensors: bit for bit
        torch.testing.assert_close(a, b, rtol=0, atol=0)
