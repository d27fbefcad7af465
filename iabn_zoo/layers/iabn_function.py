"""The InPlace-ABN computation: an autograd Function that overwrites its input with act(bn(x) [+ residual]) and
recomputes everything its backward needs from that output, on pure-PyTorch or on the compiled `inplace_abn` kernels.

Formulas (as in the authors' kernels): y = act(xhat * (|w| + eps) + b), xhat = (x - mean) / sqrt(var + eps) with the
biased batch variance; running_var is updated with the unbiased one, `running <- (1 - momentum) * running + momentum *
batch`. Backward inverts the activation on y, recovers xhat = (z - b) / (|w| + eps) and applies the BN backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..errors import InvalidArgumentError
from .sync_stats import reduce_statistics, reduce_sums


def channel_view(stat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-channel vector shaped (1, C, 1, ...) to broadcast against `x`."""
    return stat.view((1, -1) + (1,) * (x.dim() - 2))


def reduce_dims(x: torch.Tensor) -> tuple[int, ...]:
    """Every dimension but the channel one: the batch statistics are taken over these."""
    return (0,) + tuple(range(2, x.dim()))


def activate_(x: torch.Tensor, activation: str, activation_param: float) -> torch.Tensor:
    """Apply an invertible activation to `x` in place."""
    if activation == "leaky_relu":
        F.leaky_relu_(x, activation_param)
    elif activation == "elu":
        F.elu_(x, activation_param)
    return x


def invert_activation(y: torch.Tensor, dy: torch.Tensor, activation: str,
                      activation_param: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The activation's input z and the gradient dL/dz, recovered from its output y and dL/dy."""
    if activation == "leaky_relu":  # z = y / p where y < 0, and dz = dy * p there
        return (F.leaky_relu(y, 1.0 / activation_param),
                torch.ops.aten.leaky_relu_backward(dy, y, activation_param, True))
    if activation == "elu":  # y = p * (exp(z) - 1) where z < 0, so z = log1p(y / p) and dz = dy * (y + p) there
        return (y.clamp(max=0).div_(activation_param).log1p_().add_(y.clamp(min=0)),
                torch.ops.aten.elu_backward(dy, activation_param, 1, 1, True, y))
    return y, dy


def abs_scale(weight: torch.Tensor, eps: float) -> torch.Tensor:
    """InPlace-ABN's scale |w| + eps, never zero, which keeps the affine step invertible."""
    return weight.abs() + eps


class TorchKernels:
    """Pure-PyTorch kernels: run on any device and dtype. Backward works on z = act^-1(y), not on xhat."""

    name = "torch"
    overwrites_dz = False

    @staticmethod
    def statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Per-channel mean, biased variance and sample count."""
        dims = reduce_dims(x)
        mean = x.mean(dim=dims)
        var = (x - channel_view(mean, x)).pow_(2).mean(dim=dims)  # two passes: much faster than var_mean on CPU
        return mean, var, x.numel() // x.shape[1]

    @staticmethod
    def forward_(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 eps: float, activation: str, activation_param: float) -> None:
        """x <- act(xhat * (|w| + eps) + b), in place."""
        scale = abs_scale(weight, eps) * torch.rsqrt(var + eps)
        shift = bias - mean * scale
        x.mul_(channel_view(scale, x)).add_(channel_view(shift, x))
        activate_(x, activation, activation_param)

    @staticmethod
    def backward_reduce(y: torch.Tensor, dy: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                        activation: str, activation_param: float, y_is_scratch: bool = False):
        """((z, whether z may be overwritten), dz, sum_dy, sum_xhat_dy) from the output y and its gradient."""
        z, dz = invert_activation(y, dy, activation, activation_param)
        # BatchNorm's own backward reduction with mean = b and invstd = 1 / (|w| + eps) sees exactly xhat
        _, sum_xhat_dy, sum_dy = torch.ops.aten.native_batch_norm_backward(
            dz, z, None, None, None, bias, 1.0 / abs_scale(weight, eps), True, eps, [False, True, True])
        return (z, y_is_scratch or z is not y), dz, sum_dy, sum_xhat_dy

    @staticmethod
    def backward_train(state: tuple[torch.Tensor, bool], dz: torch.Tensor, var: torch.Tensor, count: int,
                       sum_dy: torch.Tensor, sum_xhat_dy: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       eps: float) -> torch.Tensor:
        """dx of training mode from the (possibly group-wide) sums."""
        # dx = (dz - sum_dy / n - xhat * sum_xhat_dy / n) * mult with xhat = (z - b) / s, as dz * a + z * b' + c
        z, z_is_scratch = state
        scale = abs_scale(weight, eps)
        mult = scale * torch.rsqrt(var + eps)
        z_coef = channel_view(-sum_xhat_dy / count * mult / scale, z)
        dx = z.mul_(z_coef) if z_is_scratch else z * z_coef  # z is the saved output unless it was recomputed
        return dx.add_(channel_view(-sum_dy / count * mult, z) - channel_view(bias, z) * z_coef).addcmul_(
            dz, channel_view(mult, z))

    @staticmethod
    def backward_eval(dz: torch.Tensor, var: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """dx of eval mode: dz * (|w| + eps) / sqrt(running_var + eps)."""
        return dz * channel_view(abs_scale(weight, eps) * torch.rsqrt(var + eps), dz)


class NativeKernels:
    """The compiled kernels of the `inplace_abn` package (float32/float64, contiguous tensors)."""

    name = "native"
    overwrites_dz = True

    def __init__(self) -> None:
        from inplace_abn import _backend

        self._backend = _backend
        self._activations = {"leaky_relu": _backend.Activation.LeakyReLU, "elu": _backend.Activation.ELU,
                             "identity": _backend.Activation.Identity}
        self.has_cuda = hasattr(_backend, "reduce_statistics")  # only CUDA builds define it

    def supports(self, x: torch.Tensor) -> bool:
        """Whether these kernels can take `x`; the others fall back to the torch kernels."""
        return (x.dtype in (torch.float32, torch.float64) and x.is_contiguous()
                and (x.device.type == "cpu" or (x.is_cuda and self.has_cuda)))

    def statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Per-channel mean, biased variance and sample count."""
        mean, var, _ = self._backend.statistics(x)
        return mean, var, x.numel() // x.shape[1]

    def forward_(self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor, eps: float, activation: str, activation_param: float) -> None:
        """x <- act(xhat * (|w| + eps) + b), in place."""
        self._backend.forward(x, mean, var, weight, bias, eps, self._activations[activation], activation_param)

    def backward_reduce(self, y: torch.Tensor, dy: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                        eps: float, activation: str, activation_param: float, y_is_scratch: bool = False):
        """(xhat, dz, sum_dy, sum_xhat_dy) in new tensors (y_is_scratch does not matter here)."""
        return self._backend.backward_reduce(y, dy.contiguous(), weight, bias, eps, self._activations[activation],
                                             activation_param)

    def backward_train(self, xhat: torch.Tensor, dz: torch.Tensor, var: torch.Tensor, count: int,
                       sum_dy: torch.Tensor, sum_xhat_dy: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       eps: float) -> torch.Tensor:
        """dx of training mode from the (possibly group-wide) sums, written over dz."""
        count_tensor = torch.full((1,), count, dtype=torch.long, device=xhat.device)
        self._backend.backward_train(xhat, dz, var, count_tensor, sum_dy, sum_xhat_dy, weight, eps)
        return dz  # overwritten with dx

    def backward_eval(self, dz: torch.Tensor, var: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """dx of eval mode: dz * (|w| + eps) / sqrt(running_var + eps)."""
        return self._backend.backward_test(dz, var, weight, eps)


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
