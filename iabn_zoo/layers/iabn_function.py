"""The InPlace-ABN computation: an autograd Function that overwrites its input with act(bn(x) [+ residual]) and
recomputes everything its backward needs from that output, on either kernel implementation (`kernels`).

Running statistics: `running <- (1 - momentum) * running + momentum * batch`, with the unbiased batch variance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from ..errors import InvalidArgumentError
from .activations import activate_, invert_activation
from .sync_stats import reduce_statistics, reduce_sums


@dataclass(frozen=True)
class IABNConfig:
    """The non-tensor arguments of one InPlace-ABN call."""

    training: bool
    momentum: float
    eps: float
    activation: str
    activation_param: float
    kernels: Any
    group: Any = None  # a torch.distributed group to synchronise over, None for local statistics


class InPlaceABNFunction(torch.autograd.Function):
    """x <- act(bn(x) + residual) in place; backward keeps only the output (and the caller's residual)."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, running_mean, running_var, config: IABNConfig):
        kernels = config.kernels
        if config.training:
            mean, var, count = kernels.statistics(x)
            if config.group is not None:
                mean, var, count = reduce_statistics(mean, var, count, config.group)
            if count <= 1:
                raise InvalidArgumentError(
                    f"InPlace-ABN needs more than one value per channel in training mode, got input of shape "
                    f"{tuple(x.shape)}; use a larger batch or spatial size, or call .eval()")
            update_running_stats(running_mean, running_var, mean, var, count, config.momentum)
        else:
            mean, var, count = running_mean, running_var.clone(), 0
        if residual is None:
            kernels.forward_(x, mean, var, weight, bias, config.eps, config.activation, config.activation_param)
        else:
            kernels.forward_(x, mean, var, weight, bias, config.eps, "identity", 0.0)
            activate_(x.add_(residual), config.activation, config.activation_param)
        ctx.config = config
        ctx.count = count
        ctx.save_for_backward(x, var, weight, bias, residual)
        ctx.mark_dirty(x)
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        config, kernels = ctx.config, ctx.config.kernels
        y, var, weight, bias, residual = ctx.saved_tensors
        if residual is None:
            state, dz, sum_dy, sum_xhat_dy = kernels.backward_reduce(
                y, dy, weight, bias, config.eps, config.activation, config.activation_param)
        else:
            z, dz = invert_activation(y, dy, config.activation, config.activation_param)
            bn_out = z - residual if z is y else z.sub_(residual)  # bn(x) = z - residual, in scratch memory
            state, dz, sum_dy, sum_xhat_dy = kernels.backward_reduce(
                bn_out, dz, weight, bias, config.eps, "identity", 0.0, y_is_scratch=True)
        need_x, need_w, need_b, need_r = ctx.needs_input_grad[:4]
        d_residual = None
        if need_r:  # dL/dresidual = dz; copy it where it aliases dy or the kernels will overwrite it with dx
            d_residual = dz.clone() if dz is dy or (need_x and kernels.overwrites_dz) else dz
        dx = None
        if config.training:
            global_sum_dy, global_sum_xhat_dy = sum_dy, sum_xhat_dy
            if config.group is not None:  # every rank takes part, whatever it needs
                global_sum_dy, global_sum_xhat_dy = reduce_sums(sum_dy, sum_xhat_dy, config.group)
            if need_x:
                dx = kernels.backward_train(state, dz, var, ctx.count, global_sum_dy, global_sum_xhat_dy, weight,
                                            bias, config.eps)
        elif need_x:
            dx = kernels.backward_eval(dz, var, weight, config.eps)
        d_weight = torch.where(weight < 0, -sum_xhat_dy, sum_xhat_dy) if need_w else None
        d_bias = sum_dy if need_b else None
        return dx, d_weight, d_bias, d_residual, None, None, None


def update_running_stats(running_mean: torch.Tensor | None, running_var: torch.Tensor | None, mean: torch.Tensor,
                         var: torch.Tensor, count: int, momentum: float) -> None:
    """Exponential moving average of the batch mean and the unbiased batch variance."""
    if running_mean is None or running_var is None:
        return
    running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
    running_var.mul_(1 - momentum).add_(var.to(running_var.dtype), alpha=momentum * count / (count - 1))
