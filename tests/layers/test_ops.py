"""The `iabn_zoo` custom operators pass `torch.library.opcheck` (schema and declared mutations, fake kernels,
AOT dispatch with dynamic shapes) on both backends, and tracers see them as one operator each."""

import pytest
import torch
from support.backends import BACKENDS, backend_case

from iabn_zoo.layers import make_norm_act, ops

ACTIVATIONS = [("leaky_relu", 0.01), ("elu", 1.0), ("identity", 0.0)]


def sample(shape=(4, 3, 5, 5), dtype=torch.float64, channels_last=False, seed=0):
    """x, weight (some negative), bias, residual, running mean and variance; channels_last: x in that memory
    format, the residual in the usual one (mixed layouts)."""
    generator = torch.Generator().manual_seed(seed)
    channels = shape[1]

    def randn(*size):
        return torch.randn(*size, generator=generator, dtype=dtype)

    x, residual = randn(*shape) * 2 + 1, randn(*shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    running_var = torch.rand(channels, generator=generator, dtype=dtype) + 0.5
    return x, randn(channels), randn(channels), residual, randn(channels), running_var


def forward_output(x, weight, bias, residual, mean, var, training, activation, param, backend):
    """y and the variance the forward used, from copies (the forward writes over its arguments)."""
    y = x.clone()
    used = ops.inplace_abn_(y, weight, bias, residual, mean.clone(), var.clone(), training, 0.1, 1e-5, activation,
                            param, backend)
    return y, used


LOCAL_CASES = ([backend_case(*act, residual, training, backend, False) for act in ACTIVATIONS
                for residual in (False, True) for training in (True, False) for backend in ("torch", "native")]
               + [("leaky_relu", 0.01, residual, training, "auto", True) for residual in (False, True)
                  for training in (True, False)])


@pytest.mark.parametrize("activation,param,with_residual,training,backend,channels_last", LOCAL_CASES)
def test_local_operators_pass_opcheck(activation, param, with_residual, training, backend, channels_last):
    x, weight, bias, residual, mean, var = sample(channels_last=channels_last)
    residual = residual if with_residual else None
    torch.library.opcheck(ops.inplace_abn_, (x.clone(), weight, bias, residual, mean.clone(), var.clone(),
                                             training, 0.1, 1e-5, activation, param, backend))
    y, used = forward_output(x, weight, bias, residual, mean, var, training, activation, param, backend)
    dy = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(1))
    for need_input_grad in (True, False):
        torch.library.opcheck(ops.inplace_abn_backward, (y, dy, used, weight, bias, residual, training, 1e-5,
                                                         activation, param, backend, need_input_grad))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("activation,param", ACTIVATIONS)
def test_group_operators_pass_opcheck(activation, param, with_residual, backend):
    x, weight, bias, residual, mean, var = sample()
    residual = residual if with_residual else None
    torch.library.opcheck(ops.batch_statistics, (x, backend))
    batch_mean, batch_var = ops.batch_statistics(x, backend)
    torch.library.opcheck(ops.inplace_abn_apply_, (x.clone(), batch_mean, batch_var, weight, bias, residual, 1e-5,
                                                   activation, param, backend))
    y, used = forward_output(x, weight, bias, residual, mean, var, True, activation, param, backend)
    dy = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(1))
    args = (y, dy, weight, bias, residual, 1e-5, activation, param, backend)
    torch.library.opcheck(ops.inplace_abn_backward_sums, args)
    sum_dy, sum_xhat_dy = ops.inplace_abn_backward_sums(*args)
    torch.library.opcheck(ops.inplace_abn_input_grad, (y, dy, used, weight, bias, residual, sum_dy, sum_xhat_dy,
                                                       y.numel() // y.shape[1], 1e-5, activation, param, backend))


def test_expanded_output_gradient_is_taken_as_it_is():
    """`out.sum().backward()` hands the layer a broadcast gradient (stride 0): no copy needed, none aliased."""
    x, weight, bias, _, mean, var = sample()
    y, used = forward_output(x, weight, bias, None, mean, var, True, "leaky_relu", 0.01, "torch")
    dy = torch.ones(1, dtype=y.dtype).expand(y.shape)
    torch.library.opcheck(ops.inplace_abn_backward, (y, dy, used, weight, bias, None, True, 1e-5, "leaky_relu",
                                                     0.01, "torch", True))


@pytest.mark.parametrize("training", [True, False])
def test_export_sees_one_operator_per_layer(training):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), make_norm_act("inplace")(4)).train(training)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        program = torch.export.export(net, (x,))
        expected = net(x.clone())
    targets = [node.target for node in program.graph.nodes if node.op == "call_function"]
    assert torch.ops.iabn_zoo.inplace_abn_.default in targets, targets
    if not training:
        with torch.no_grad():
            torch.testing.assert_close(program.module()(x), expected, rtol=0, atol=0)
