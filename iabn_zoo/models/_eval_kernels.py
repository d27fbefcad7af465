"""The tensor arithmetic of the fast eval path: a norm-act layer's eval affine, cache keys, memory layouts, and
convolutions on weights packed for oneDNN."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..layers import ABN


def eval_affine(layer: ABN, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) of a norm-act layer in eval mode: its output is act(x * scale + shift).
    Computed in `dtype`, by default the layer's own but never below float32 (half types lose ~1e-2 here)."""
    dtype = dtype or torch.promote_types(layer.weight.dtype, torch.float32)
    weight, bias = layer.weight.to(dtype), layer.bias.to(dtype)
    weight = weight if layer.bn_mode == "standard" else weight.abs() + layer.eps
    scale = weight / torch.sqrt(layer.running_var.to(dtype) + layer.eps)
    return scale, bias - layer.running_mean.to(dtype) * scale


def tensors_key(*tensors: torch.Tensor | None) -> tuple:
    """Identity, version, dtype and device of tensors: a cache built from them is stale when the key changes."""
    return tuple(None if t is None else (t.data_ptr(), -1 if t.is_inference() else t._version, t.dtype, t.device)
                 for t in tensors)


def dense(x: torch.Tensor) -> bool:
    """Whether every element of `x` has its own memory (contiguous in some layout), so it can be written over."""
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


def spatial_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format a 4-D activation is in, so cached weights can match it."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def pack_weight(conv: nn.Conv2d, weight: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """`weight` (shaped as `conv`'s) reordered into the oneDNN layout best for inputs of `shape`."""
    return torch._C._nn.mkldnn_reorder_conv2d_weight(weight.contiguous().to_mkldnn(), list(conv.padding),
                                                     list(conv.stride), list(conv.dilation), conv.groups, list(shape))


def packed_conv(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`conv`'s convolution of `x` with a packed `weight` and `bias`; the output is channels-last."""
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, list(conv.padding), list(conv.stride),
                                                   list(conv.dilation), conv.groups, "none", [], "")
