"""The two implementations of InPlace-ABN's arithmetic (pure PyTorch, and the compiled `inplace_abn` kernels) and
the choice between them, made per call from the tensors (`kernels_for`).

Backends: `native` (the compiled kernels wherever they take the tensors), `torch`, and `auto`, the default: the
compiled kernels for CUDA tensors when the extension was built with CUDA, the torch kernels everywhere else (the
compiled CPU kernels are single-threaded loops, slower than PyTorch's own vectorised, multi-threaded ones). Either
way the compiled kernels take float32/float64 contiguous tensors only; other calls (bf16, fp16, channels-last) run
on the torch kernels, on the tensors as they are (no copy of the activation).

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

BACKENDS = ("auto", "native", "torch")
REDUCED_PRECISION = (torch.float16, torch.bfloat16)


def channel_view(stat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-channel vector shaped (1, C, 1, ...) to broadcast against `x`."""
    return stat.view((1, -1) + (1,) * (x.dim() - 2))


def abs_scale(weight: torch.Tensor, eps: float) -> torch.Tensor:
    """InPlace-ABN's scale |w| + eps, never zero, which keeps the affine step invertible."""
    return weight.abs() + eps


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics are computed and kept in: float64 for float64 tensors, float32 for every other one
    (bf16 and fp16 activations included, as autocast hands them over)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class TorchKernels:
    """Pure-PyTorch kernels: run on any device and dtype. Backward works on z = act^-1(y), not on xhat."""

    name = "torch"
    overwrites_dz = False

    @staticmethod
    def statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Per-channel mean, biased variance and sample count, by BatchNorm's own statistics kernel (two passes, no
        temporary: twice as fast as mean + centred square on CPU); reduced-precision inputs accumulate in float32
        (its mixed-type path, chosen by float32 running buffers that momentum 0 leaves as they are)."""
        accumulate = stat_dtype(x.dtype)
        running = None if x.dtype == accumulate else x.new_zeros(x.shape[1], dtype=accumulate)
        mean, var = torch.batch_norm_update_stats(x, running, None if running is None else running + 1, 0.0)
        return mean, var, x.numel() // x.shape[1]

    @staticmethod
    def forward_(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 eps: float, activation: str, activation_param: float) -> None:
        """x <- act(xhat * (|w| + eps) + b), in place: BatchNorm's eval transform written over its input (one
        pass, computed in the statistics' precision and rounded once), then the activation."""
        accumulate = stat_dtype(x.dtype)
        unused = x.new_empty(0, dtype=accumulate)
        torch.ops.aten.native_batch_norm.out(x, abs_scale(weight.to(accumulate), eps), bias.to(accumulate),
                                             mean.to(accumulate), var.to(accumulate), False, 0.0, eps, out=x,
                                             save_mean=unused, save_invstd=unused.clone())
        activate_(x, activation, activation_param)

    @staticmethod
    def backward_reduce(y: torch.Tensor, dy: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                        activation: str, activation_param: float, y_is_scratch: bool = False):
        """((z, whether z may be overwritten), dz, sum_dy, sum_xhat_dy) from the output y and its gradient."""
        z, dz = invert_activation(y, dy, activation, activation_param)
        # BatchNorm's own backward reduction with mean = b and invstd = 1 / (|w| + eps) sees exactly xhat; it
        # accumulates reduced-precision inputs in float32 when the per-channel vectors are float32
        accumulate = stat_dtype(y.dtype)
        _, sum_xhat_dy, sum_dy = torch.ops.aten.native_batch_norm_backward(
            dz, z, None, None, None, bias.to(accumulate), 1.0 / abs_scale(weight.to(accumulate), eps), True, eps,
            [False, True, True])
        return (z, y_is_scratch or z is not y), dz, sum_dy, sum_xhat_dy

    @staticmethod
    def backward_local(y: torch.Tensor, dy: torch.Tensor, var: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor, eps: float, activation: str, activation_param: float,
                       y_is_scratch: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(dx, sum_dy, sum_xhat_dy) of training mode with this batch's statistics, in one call of BatchNorm's
        backward: with mean = b and invstd = 1 / s it sees xhat, and weight s^2 / sqrt(var + eps) makes its input
        gradient ours, dx = (dz - mean(dz) - xhat * mean(xhat * dz)) * s / sqrt(var + eps)."""
        z, dz = invert_activation(y, dy, activation, activation_param)
        accumulate = stat_dtype(y.dtype)
        scale = abs_scale(weight.to(accumulate), eps)
        dx, sum_xhat_dy, sum_dy = torch.ops.aten.native_batch_norm_backward(
            dz, z, scale * scale * torch.rsqrt(var.to(accumulate) + eps), None, None, bias.to(accumulate),
            1.0 / scale, True, eps, [True, True, True])
        return dx, sum_dy, sum_xhat_dy

    @staticmethod
    def backward_train(state: tuple[torch.Tensor, bool], dz: torch.Tensor, var: torch.Tensor, count: int,
                       sum_dy: torch.Tensor, sum_xhat_dy: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       eps: float) -> torch.Tensor:
        """dx of training mode from group-wide sums (`backward_local` when they are this batch's)."""
        # dx = (dz - sum_dy / n - xhat * sum_xhat_dy / n) * mult with xhat = (z - b) / s, as dz * a + z * b' + c
        z, z_is_scratch = state
        scale = abs_scale(weight.to(z.dtype), eps)
        mult = scale * torch.rsqrt(var.to(z.dtype) + eps)
        z_coef = channel_view(-sum_xhat_dy.to(z.dtype) / count * mult / scale, z)
        dx = z.mul_(z_coef) if z_is_scratch else z * z_coef  # z is the saved output unless it was recomputed
        shift = channel_view(-sum_dy.to(z.dtype) / count * mult, z) - channel_view(bias.to(z.dtype), z) * z_coef
        return dx.add_(shift).addcmul_(dz, channel_view(mult, z))

    @staticmethod
    def backward_eval(dz: torch.Tensor, var: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """dx of eval mode: dz * (|w| + eps) / sqrt(running_var + eps), in dz's dtype, rounded once."""
        accumulate = stat_dtype(dz.dtype)
        mult = abs_scale(weight.to(accumulate), eps) * torch.rsqrt(var.to(accumulate) + eps)
        return torch.mul(dz, channel_view(mult, dz), out=torch.empty_like(dz, memory_format=torch.contiguous_format))


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

    def supports(self, x: torch.Tensor, *others: torch.Tensor | None) -> bool:
        """Whether these kernels can take `x` and the tensors used with it (same dtype and device, float32/float64,
        contiguous); calls they cannot take run on the torch kernels."""
        return (x.dtype in (torch.float32, torch.float64) and x.is_contiguous()
                and (x.device.type == "cpu" or (x.is_cuda and self.has_cuda))
                and all(t is None or (t.dtype == x.dtype and t.device == x.device) for t in others))

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

    def backward_local(self, y: torch.Tensor, dy: torch.Tensor, var: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor, eps: float, activation: str, activation_param: float,
                       y_is_scratch: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(dx, sum_dy, sum_xhat_dy) of training mode with this batch's statistics."""
        xhat, dz, sum_dy, sum_xhat_dy = self.backward_reduce(y, dy, weight, bias, eps, activation, activation_param)
        dx = self.backward_train(xhat, dz, var, y.numel() // y.shape[1], sum_dy, sum_xhat_dy, weight, bias, eps)
        return dx, sum_dy, sum_xhat_dy


@functools.cache
def native_kernels() -> NativeKernels | None:
    """The compiled kernels, or None when the `inplace_abn` package cannot be imported."""
    try:
        return NativeKernels()
    except ImportError:
        return None


def resolve_backend(backend: str | None = None) -> str:
    """The backend a layer asks for: `backend`, else `IABN_ZOO_BACKEND`, else `auto` (chosen per call from the
    input's device, `kernels_for`)."""
    chosen = backend if backend is not None else os.environ.get("IABN_ZOO_BACKEND") or "auto"
    if chosen not in BACKENDS:
        source = "backend" if backend is not None else "IABN_ZOO_BACKEND"
        raise InvalidArgumentError(f"{source} must be one of {', '.join(BACKENDS)}, got {chosen!r}")
    if chosen == "native" and native_kernels() is None:
        raise InvalidArgumentError(
            "backend 'native' needs the compiled inplace-abn package, which cannot be imported here; install it "
            "(see README) or use backend='torch'")
    return chosen


def kernels_name(backend: str, device_type: str) -> str:
    """Which kernels `backend` runs for float32 contiguous tensors on `device_type`: `native` or `torch`."""
    native = native_kernels()
    if backend == "torch" or native is None:
        return "torch"
    on_cuda = device_type == "cuda" and native.has_cuda
    if backend == "auto":
        return "native" if on_cuda else "torch"
    return "native" if on_cuda or device_type == "cpu" else "torch"


def kernels_for(backend: str, x: torch.Tensor, *others: torch.Tensor | None) -> TorchKernels | NativeKernels:
    """The kernels one call runs on: the compiled ones where `backend` asks for them on x's device (`native`: any
    device they were built for; `auto`: CUDA only) and they take the tensors, the torch ones otherwise."""
    native = native_kernels()
    if kernels_name(backend, x.device.type) == "native" and native.supports(x, *others):
        return native
    return TorchKernels
