"""The InPlace-ABN computation: an autograd Function that overwrites its input with act(bn(x) [+ residual]) and
computes everything its backward needs from that output, through the `iabn_zoo` custom operators (`ops`).

Running statistics: `running <- (1 - momentum) * running + momentum * batch`, with the unbiased batch variance.
With a process group, the batch statistics and the backward's sums are reduced over it between operators.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InvalidArgumentError
from . import ops
from .sync_stats import reduce_statistics, reduce_sums


def inplace_abn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None,
                running_mean: torch.Tensor, running_var: torch.Tensor, training: bool, momentum: float, eps: float,
                activation: str, activation_param: float, backend: str, group: Any) -> torch.Tensor:
    """x <- act(bn(x) [+ residual]) in place, returning x: through the autograd Function when autograd records this
    call, straight through the operators when it does not (inference, which tracers also see that way)."""
    tensors = (x, weight, bias, residual)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return InPlaceABNFunction.apply(x, weight, bias, residual, running_mean, running_var, training, momentum,
                                        eps, activation, activation_param, backend, group)
    forward_(x, weight, bias, residual, running_mean, running_var, training, momentum, eps, activation,
             activation_param, backend, group)
    return x


def forward_(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None,
             running_mean: torch.Tensor, running_var: torch.Tensor, training: bool, momentum: float, eps: float,
             activation: str, activation_param: float, backend: str, group: Any) -> tuple[torch.Tensor, int]:
    """The forward computation: (variance used, group-wide values per channel, or 0 for local statistics)."""
    if training and group is not None:
        return synchronised_forward(x, weight, bias, residual, running_mean, running_var, momentum, eps, activation,
                                    activation_param, backend, group)
    var = ops.inplace_abn_(x, weight, bias, residual, running_mean, running_var, training, momentum, eps, activation,
                           activation_param, backend)
    return var, 0


class InPlaceABNFunction(torch.autograd.Function):
    """x <- act(bn(x) + residual) in place; backward keeps only the output (and the caller's residual).

    Arguments after the tensors: training, momentum, eps, activation, activation_param, backend (`auto`, `native`
    or `torch`) and group (a torch.distributed group with more than one member, or None for local statistics).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None,
                running_mean: torch.Tensor, running_var: torch.Tensor, training: bool, momentum: float, eps: float,
                activation: str, activation_param: float, backend: str, group: Any) -> torch.Tensor:
        var, count = forward_(x, weight, bias, residual, running_mean, running_var, training, momentum, eps,
                              activation, activation_param, backend, group)
        ctx.options = (training, eps, activation, activation_param, backend, group, count)
        ctx.save_for_backward(x, var, weight, bias, residual)
        ctx.mark_dirty(x)
        return x

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        training, eps, activation, activation_param, backend, group, count = ctx.options
        y, var, weight, bias, residual = ctx.saved_tensors
        if training and group is not None:
            dx, d_weight, d_bias, d_residual = synchronised_backward(
                y, dy, var, weight, bias, residual, count, eps, activation, activation_param, backend, group)
        else:
            dx, d_weight, d_bias, d_residual = ops.inplace_abn_backward(
                y, dy, var, weight, bias, residual, training, eps, activation, activation_param, backend,
                ctx.needs_input_grad[0])
        return (dx if ctx.needs_input_grad[0] else None, d_weight, d_bias,
                d_residual if residual is not None else None, None, None, None, None, None, None, None, None, None)


def synchronised_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor | None,
                         running_mean: torch.Tensor, running_var: torch.Tensor, momentum: float, eps: float,
                         activation: str, activation_param: float, backend: str,
                         group: Any) -> tuple[torch.Tensor, int]:
    """Training forward with statistics shared over `group`: (variance used, values per channel group-wide)."""
    mean, var = ops.batch_statistics(x, backend)
    mean, var, count = reduce_statistics(mean, var, x.numel() // x.shape[1], group)
    if count <= 1:
        raise InvalidArgumentError(
            f"InPlace-ABN needs more than one value per channel in training mode, got input of shape "
            f"{tuple(x.shape)} over the whole group; use a larger batch or spatial size, or call .eval()")
    with torch.no_grad():
        ops.update_running_stats(running_mean, running_var, mean, var, count, momentum)
    ops.inplace_abn_apply_(x, mean, var, weight, bias, residual, eps, activation, activation_param, backend)
    return var, count


def synchronised_backward(y: torch.Tensor, dy: torch.Tensor, var: torch.Tensor, weight: torch.Tensor,
                          bias: torch.Tensor, residual: torch.Tensor | None, count: int, eps: float, activation: str,
                          activation_param: float, backend: str, group: Any):
    """Training backward with statistics shared over `group`: every rank takes part in the all-reduce."""
    sum_dy, sum_xhat_dy = ops.inplace_abn_backward_sums(y, dy, weight, bias, residual, eps, activation,
                                                        activation_param, backend)
    global_sum_dy, global_sum_xhat_dy = reduce_sums(sum_dy, sum_xhat_dy, group)
    dx, d_residual = ops.inplace_abn_input_grad(y, dy, var, weight, bias, residual, global_sum_dy,
                                                global_sum_xhat_dy, count, eps, activation, activation_param,
                                                backend)
    d_weight, d_bias = ops.param_grads(weight, bias, sum_dy, sum_xhat_dy)
    return dx, d_weight, d_bias, d_residual
