"""InPlace-ABN as `torch.library` custom operators (namespace `iabn_zoo`), so torch.compile and torch.export see
one opaque operator per layer call instead of tracing the kernels (the compiled ones through pybind included).

Local statistics (one process, or eval): `inplace_abn_` overwrites x with act(bn(x) [+ residual]) and updates the
running statistics (declared mutations), returning the variance it used; `inplace_abn_backward` computes every
gradient from the output alone, in one fused call. With a process group the collectives stay in Python between
smaller operators: `batch_statistics`, the reduction, `inplace_abn_apply_`; in backward `inplace_abn_backward_sums`,
the all-reduce, `inplace_abn_input_grad`. Each operator picks its kernels per call from its tensors (`kernels_for`).
Autograd is the Python Function of `iabn_function` (torch.library refuses autograd formulas for mutable operators).
"""

from __future__ import annotations

import torch
from torch.library import custom_op

from .activations import activate_, invert_activation
from .kernels import REDUCED_PRECISION, kernels_for, stat_dtype

NAMESPACE = "iabn_zoo"
# The kernels take tensors of any strides. Without this tag inductor copies an input whose strides it cannot match
# (a conv output of 1x1 spatial size) and, for the mutated x, then fails to schedule the copy back (torch 2.13).
ANY_LAYOUT = (torch.Tag.flexible_layout,)


def _channels(x: torch.Tensor) -> int:
    return x.shape[1]


def update_running_stats(running_mean: torch.Tensor, running_var: torch.Tensor, mean: torch.Tensor,
                         var: torch.Tensor, count: int, momentum: float) -> None:
    """Exponential moving average of the batch mean and the unbiased batch variance, in the buffers' dtype."""
    running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
    running_var.mul_(1 - momentum).add_(var.to(running_var.dtype), alpha=momentum * count / (count - 1))


def _apply(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
           residual: torch.Tensor | None, eps: float, activation: str, activation_param: float, backend: str) -> None:
    """x <- act(bn(x) [+ residual]) with the given statistics, in place."""
    kernels = kernels_for(backend, x, mean, var, weight, bias)
    if residual is None:
        kernels.forward_(x, mean, var, weight, bias, eps, activation, activation_param)
    else:
        kernels.forward_(x, mean, var, weight, bias, eps, "identity", 0.0)
        activate_(x.add_(residual), activation, activation_param)


@custom_op(f"{NAMESPACE}::inplace_abn_", mutates_args=("x", "running_mean", "running_var"), tags=ANY_LAYOUT)
def inplace_abn_(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None,
                 running_mean: torch.Tensor, running_var: torch.Tensor, training: bool, momentum: float, eps: float,
                 activation: str, activation_param: float, backend: str) -> torch.Tensor:
    """x <- act(bn(x) [+ residual]) in place with this call's statistics (training: the batch's, which also move
    the running ones; eval: the running ones). Returns the variance used, which backward needs."""
    if training:
        mean, var, count = kernels_for(backend, x).statistics(x)
        update_running_stats(running_mean, running_var, mean, var, count, momentum)
    else:  # the returned variance must be a tensor of its own, not the buffer
        accumulate = stat_dtype(x.dtype)
        mean, var = running_mean.to(accumulate), running_var.to(accumulate, copy=True)
    _apply(x, mean, var, weight, bias, residual, eps, activation, activation_param, backend)
    return var


@inplace_abn_.register_fake
def _(x, weight, bias, residual, running_mean, running_var, training, momentum, eps, activation, activation_param,
      backend):
    return x.new_empty(_channels(x), dtype=stat_dtype(x.dtype))


def _bn_output(y: torch.Tensor, dy: torch.Tensor, residual: torch.Tensor | None, activation: str,
               activation_param: float):
    """What the kernels' backward starts from: (y', dy', activation', parameter', whether y' is scratch, dL/dresidual
    or None). Without a residual that is y itself; with one, bn(x) = act^-1(y) - residual, an identity layer.

    A reduced-precision (bf16, fp16) output is taken up to float32 first: xhat is recovered from the rounded output,
    and in a layer with few values per channel the BN backward's cancellations would amplify a second rounding.
    """
    if y.dtype in REDUCED_PRECISION:
        y, dy = y.float(), dy.float()
    if residual is None:
        return y, dy, activation, activation_param, False, None
    z, dz = invert_activation(y, dy, activation, activation_param)
    bn_out = z - residual if z is y else z.sub_(residual)  # in scratch memory
    return bn_out, dz, "identity", 0.0, True, dz


def _reduce(y: torch.Tensor, dy: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
            residual: torch.Tensor | None, eps: float, activation: str, activation_param: float, backend: str):
    """The backward's reduction: (kernels, state, dz, sum_dy, sum_xhat_dy, dL/dresidual or None)."""
    y, dy, activation, activation_param, scratch, d_residual = _bn_output(y, dy, residual, activation,
                                                                          activation_param)
    kernels = kernels_for(backend, y, weight, bias)
    state, dz, sum_dy, sum_xhat_dy = kernels.backward_reduce(y, dy, weight, bias, eps, activation, activation_param,
                                                             y_is_scratch=scratch)
    return kernels, state, dz, sum_dy, sum_xhat_dy, d_residual


def _laid_out_like(t: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`t` with the dtype and strides `torch.empty_like(reference)` has, which the fake kernels promise (inductor
    indexes the output by them); copied only where the kernels worked in float32 or produced another layout
    (inputs of mixed memory formats)."""
    if t.dtype == reference.dtype and t.stride() == torch.empty_like(reference, device="meta").stride():
        return t
    return torch.empty_like(reference).copy_(t)


def _residual_grad(d_residual: torch.Tensor | None, dy: torch.Tensor, y: torch.Tensor,
                   residual: torch.Tensor | None) -> torch.Tensor:
    """dL/dresidual (= dL/dz, which the kernels leave untouched) as an output of its own: a copy where it is dy
    itself (identity activation), empty without a residual."""
    if d_residual is None:
        return y.new_empty(0)
    return _laid_out_like(d_residual.to(residual.dtype, copy=d_residual is dy), residual)


def param_grads(weight: torch.Tensor, bias: torch.Tensor, sum_dy: torch.Tensor,
                 sum_xhat_dy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """dL/dweight (the scale is |w| + eps) and dL/dbias, in the parameters' dtypes."""
    return torch.where(weight < 0, -sum_xhat_dy, sum_xhat_dy).to(weight.dtype), sum_dy.to(bias.dtype)


@custom_op(f"{NAMESPACE}::inplace_abn_backward", mutates_args=(), tags=ANY_LAYOUT)
def inplace_abn_backward(y: torch.Tensor, dy: torch.Tensor, var: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor, residual: torch.Tensor | None, training: bool, eps: float,
                         activation: str, activation_param: float, backend: str,
                         need_input_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias, dresidual) of `inplace_abn_` with local statistics, from its output y alone; dx is
    empty when not needed, dresidual when there is no residual."""
    if training and need_input_grad:  # the fused path: reduction and input gradient in one call
        y_in, dy_in, act, param, scratch, d_residual = _bn_output(y, dy, residual, activation, activation_param)
        dx, sum_dy, sum_xhat_dy = kernels_for(backend, y_in, weight, bias).backward_local(
            y_in, dy_in, var, weight, bias, eps, act, param, y_is_scratch=scratch)
    else:
        kernels, _, dz, sum_dy, sum_xhat_dy, d_residual = _reduce(y, dy, weight, bias, residual, eps, activation,
                                                                  activation_param, backend)
        dx = kernels.backward_eval(dz, var, weight, eps) if need_input_grad else y.new_empty(0)
    if need_input_grad:
        dx = _laid_out_like(dx, y)
    d_weight, d_bias = param_grads(weight, bias, sum_dy, sum_xhat_dy)
    return dx, d_weight, d_bias, _residual_grad(d_residual, dy, y, residual)


@inplace_abn_backward.register_fake
def _(y, dy, var, weight, bias, residual, training, eps, activation, activation_param, backend, need_input_grad):
    dx = torch.empty_like(y) if need_input_grad else y.new_empty(0)
    d_residual = y.new_empty(0) if residual is None else torch.empty_like(residual)
    return dx, torch.empty_like(weight), torch.empty_like(bias), d_residual


@custom_op(f"{NAMESPACE}::batch_statistics", mutates_args=(), tags=ANY_LAYOUT)
def batch_statistics(x: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of this process's batch (to be reduced over a group)."""
    mean, var, _ = kernels_for(backend, x).statistics(x)
    return mean, var


@batch_statistics.register_fake
def _(x, backend):
    return (x.new_empty(_channels(x), dtype=stat_dtype(x.dtype)),
            x.new_empty(_channels(x), dtype=stat_dtype(x.dtype)))


@custom_op(f"{NAMESPACE}::inplace_abn_apply_", mutates_args=("x",), tags=ANY_LAYOUT)
def inplace_abn_apply_(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor, residual: torch.Tensor | None, eps: float, activation: str,
                       activation_param: float, backend: str) -> None:
    """x <- act(bn(x) [+ residual]) in place with given (group-wide) statistics."""
    _apply(x, mean, var, weight, bias, residual, eps, activation, activation_param, backend)


@custom_op(f"{NAMESPACE}::inplace_abn_backward_sums", mutates_args=(), tags=ANY_LAYOUT)
def inplace_abn_backward_sums(y: torch.Tensor, dy: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                              residual: torch.Tensor | None, eps: float, activation: str, activation_param: float,
                              backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's per-channel sums of dz and xhat * dz (to be all-reduced over a group)."""
    _, _, _, sum_dy, sum_xhat_dy, _ = _reduce(y, dy, weight, bias, residual, eps, activation, activation_param,
                                              backend)
    return sum_dy, sum_xhat_dy


@inplace_abn_backward_sums.register_fake
def _(y, dy, weight, bias, residual, eps, activation, activation_param, backend):
    return (y.new_empty(_channels(y), dtype=stat_dtype(y.dtype)),
            y.new_empty(_channels(y), dtype=stat_dtype(y.dtype)))


@custom_op(f"{NAMESPACE}::inplace_abn_input_grad", mutates_args=(), tags=ANY_LAYOUT)
def inplace_abn_input_grad(y: torch.Tensor, dy: torch.Tensor, var: torch.Tensor, weight: torch.Tensor,
                           bias: torch.Tensor, residual: torch.Tensor | None, sum_dy: torch.Tensor,
                           sum_xhat_dy: torch.Tensor, count: int, eps: float, activation: str,
                           activation_param: float, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dresidual) of training mode from group-wide sums over `count` values per channel; dresidual is
    empty when there is no residual."""
    kernels, state, dz, _, _, d_residual = _reduce(y, dy, weight, bias, residual, eps, activation,
                                                   activation_param, backend)
    dx = kernels.backward_train(state, dz, var, count, sum_dy, sum_xhat_dy, weight, bias, eps)
    return _laid_out_like(dx, y), _residual_grad(d_residual, dy, y, residual)


@inplace_abn_input_grad.register_fake
def _(y, dy, var, weight, bias, residual, sum_dy, sum_xhat_dy, count, eps, activation, activation_param, backend):
    return torch.empty_like(y), y.new_empty(0) if residual is None else torch.empty_like(residual)
