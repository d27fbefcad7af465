"""Memory-lean max pooling: the same function as `nn.MaxPool2d`, keeping one byte per output for backward.

`nn.MaxPool2d` keeps its whole input plus int64 indices for backward. The gradient only needs to know which
position of each window won, so this pooling keeps that position as an int8 (windows up to 11x11) and nothing
else: the input can be freed, and the output is free to be overwritten by a following in-place layer.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as functional

from ..errors import InvalidArgumentError

MAX_WINDOW_POSITIONS = 127  # positions are stored as int8


def _window_offsets(out_size: int, stride: int, padding: int, device: torch.device) -> torch.Tensor:
    """Input coordinate of the top (or left) edge of every output window along one axis."""
    return torch.arange(out_size, device=device) * stride - padding


def _to_window_positions(flat_indices: torch.Tensor, in_width: int, kernel: int, stride: int,
                         padding: int) -> torch.Tensor:
    """Turn max_pool2d's flat input indices into int8 positions (row * kernel + col) within each window."""
    out_h, out_w = flat_indices.shape[-2:]
    rows = flat_indices // in_width - _window_offsets(out_h, stride, padding, flat_indices.device)[:, None]
    cols = flat_indices % in_width - _window_offsets(out_w, stride, padding, flat_indices.device)[None, :]
    return (rows * kernel + cols).to(torch.int8)


def _to_flat_indices(positions: torch.Tensor, in_width: int, kernel: int, stride: int,
                     padding: int) -> torch.Tensor:
    """Inverse of `_to_window_positions`: flat input indices (int64) of the window maxima."""
    out_h, out_w = positions.shape[-2:]
    positions = positions.long()
    rows = positions // kernel + _window_offsets(out_h, stride, padding, positions.device)[:, None]
    cols = positions % kernel + _window_offsets(out_w, stride, padding, positions.device)[None, :]
    return rows * in_width + cols


class _LeanMaxPool2dFunction(torch.autograd.Function):
    """Max pooling whose backward scatters the gradient to the window maxima recorded as int8 positions."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kernel: int, stride: int, padding: int) -> torch.Tensor:
        out, flat_indices = functional.max_pool2d(x, kernel, stride, padding, return_indices=True)
        ctx.geometry = (kernel, stride, padding)
        ctx.input_shape = x.shape
        ctx.save_for_backward(_to_window_positions(flat_indices, x.shape[-1], kernel, stride, padding))
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        (positions,) = ctx.saved_tensors
        kernel, stride, padding = ctx.geometry
        n, c, h, w = ctx.input_shape
        flat_indices = _to_flat_indices(positions, w, kernel, stride, padding)
        grad_in = grad_out.new_zeros(n, c, h * w)
        grad_in.scatter_add_(2, flat_indices.view(n, c, -1), grad_out.reshape(n, c, -1))
        return grad_in.view(n, c, h, w), None, None, None


class LeanMaxPool2d(nn.Module):
    """Drop-in for `nn.MaxPool2d(kernel_size, stride, padding)` on (N, C, H, W) inputs, lean in backward memory."""

    def __init__(self, kernel_size: int, stride: int | None = None, padding: int = 0):
        super().__init__()
        stride = kernel_size if stride is None else stride
        if kernel_size * kernel_size > MAX_WINDOW_POSITIONS + 1 or min(kernel_size, stride) < 1:
            raise InvalidArgumentError(f"LeanMaxPool2d takes windows from 1x1 to 11x11 and stride >= 1, "
                                       f"got kernel {kernel_size}, stride {stride}; use nn.MaxPool2d otherwise")
        if not 0 <= padding <= kernel_size // 2:
            raise InvalidArgumentError(f"padding must lie in [0, kernel_size // 2], got {padding}")
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise InvalidArgumentError(f"LeanMaxPool2d expects an (N, C, H, W) tensor, got shape {tuple(x.shape)}")
        if not (x.requires_grad and torch.is_grad_enabled()):
            return functional.max_pool2d(x, self.kernel_size, self.stride, self.padding)
        return _LeanMaxPool2dFunction.apply(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


def max_pool(memory_efficient: bool) -> nn.Module:
    """The networks' 3x3/2 max pooling: lean in backward memory, or the usual `nn.MaxPool2d` (same function)."""
    return LeanMaxPool2d(3, stride=2, padding=1) if memory_efficient else nn.MaxPool2d(3, stride=2, padding=1)
