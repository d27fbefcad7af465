"""The two implementations of InPlace-ABN's arithmetic (pure PyTorch, and the compiled `inplace_abn` kernels) and
the choice between them.

Formulas (as in the authors' kernels): y = act(xhat * (|w| + eps) + b), xhat = (x - mean) / sqrt(var + eps) with the
biased batch variance. Backward inverts the activation on y, recovers xhat = (z - b) / (|w| + eps) and applies the
BN backward.
"""

from __future__ import annotations

import functools
import os

import torch

from ..errors import InvalidArgumentError
from .activations import activate_, invert_activation

BACKENDS = ("native", "torch")


def channel_view(stat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-channel vector shaped (1, C, 1, ...) to broadcast against `x`."""
    return stat.view((1, -1) + (1,) * (x.dim() - 2))


def reduce_dims(x: torch.Tensor) -> tuple[int, ...]:
    """Every dimension but the channel one: the batch statistics are taken over these."""
    return (0,) + tuple(range(2, x.dim()))


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


@functools.cache
def native_kernels() -> NativeKernels | None:
    """The compiled kernels, or None when the `inplace_abn` package cannot be imported."""
    try:
        return NativeKernels()
    except ImportError:
        return None


def resolve_backend(backend: str | None = None) -> str:
    """The backend to use: `backend`, else `IABN_ZOO_BACKEND`, else `native` when importable, else `torch`."""
    chosen = backend if backend is not None else os.environ.get("IABN_ZOO_BACKEND") or None
    if chosen is None:
        return "native" if native_kernels() is not None else "torch"
    if chosen not in BACKENDS:
        source = "backend" if backend is not None else "IABN_ZOO_BACKEND"
        raise InvalidArgumentError(f"{source} must be one of {', '.join(BACKENDS)}, got {chosen!r}")
    if chosen == "native" and native_kernels() is None:
        raise InvalidArgumentError(
            "backend 'native' needs the compiled inplace-abn package, which cannot be imported here; install it "
            "(see README) or use backend='torch'")
    return chosen
