"""A deployable copy of a network: standard PyTorch modules only, computing the network's eval-mode function.

In eval mode a norm-act layer is act(x * scale + shift) (`eval_affine`). The copy folds that affine into the
Conv2d right before it wherever the network feeds one into the other (adjacent in an nn.Sequential, and a ResNet
block's `proj_conv` -> `proj_bn`): one Conv2d with bias, computed in float64 and cast once to the copy's dtype, so a
bf16 copy rounds each weight once. The remaining norm-act layers become `AffineActivation` (a per-channel affine
and an out-of-place activation), `LeanMaxPool2d` becomes `nn.MaxPool2d`, dropout goes (identity in eval), dense
blocks stop recomputing. The copy has no fast-eval overrides, custom ops, in-place custom kernels or prepacked
weights: what `torch.export` and ONNX need. It is an inference copy: its parameters do not require gradients.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
import torch.nn as nn

from ..errors import InvalidArgumentError
from ..layers import ABN, LeanMaxPool2d, activate
from ._base import ZooModule
from ._blocks import ResidualBlock
from ._fast_eval import STATE_ATTR, disable_fast_eval, eval_affine
from .densenet import DenseModule

DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


class AffineActivation(nn.Module):
    """act(x * scale + shift (+ residual)) with per-channel `scale` and `shift` (None when a convolution before it
    already applied them): the eval-mode function of a norm-act layer in standard operators, out of place."""

    def __init__(self, scale: torch.Tensor | None, shift: torch.Tensor | None, activation: str,
                 activation_param: float):
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)
        self.activation = activation
        self.activation_param = activation_param

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self.scale is not None:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            x = torch.addcmul(self.shift.view(shape), x, self.scale.view(shape))
        if residual is not None:
            x = x + residual
        return activate(x, self.activation, self.activation_param)

    def extra_repr(self) -> str:
        folded = "folded into the convolution before, " if self.scale is None else ""
        return f"{folded}activation={self.activation}[{self.activation_param:g}]"


def folded_conv(conv: nn.Conv2d, norm: ABN, dtype: torch.dtype) -> nn.Conv2d:
    """`conv` followed by `norm`'s eval affine as one Conv2d with bias: weights folded in float64, cast to `dtype`."""
    with torch.no_grad():
        scale, shift = eval_affine(norm, torch.float64)
        weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
        bias = shift if conv.bias is None else conv.bias.double() * scale + shift
        folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                           padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                           padding_mode=conv.padding_mode, device=conv.weight.device, dtype=dtype)
        folded.weight.copy_(weight)
        folded.bias.copy_(bias)
    return folded


def standalone_norm(norm: ABN, dtype: torch.dtype) -> AffineActivation:
    """A norm-act layer nothing folds into, as its affine (computed in float64, cast to `dtype`) + activation."""
    with torch.no_grad():
        scale, shift = eval_affine(norm, torch.float64)
    return AffineActivation(scale.to(dtype), shift.to(dtype), norm.activation, norm.activation_param)


def activation_after_fold(norm: ABN) -> AffineActivation:
    """What remains of a norm-act layer whose affine went into the convolution before it."""
    return AffineActivation(None, None, norm.activation, norm.activation_param)


def fold_pairs(root: nn.Module) -> Iterator[tuple[nn.Module, str, str]]:
    """(parent, conv name, norm name) of every Conv2d that feeds a norm-act layer: side by side in an nn.Sequential
    (the order every zoo block runs them in), or a ResNet block's projection."""
    for parent in root.modules():
        if isinstance(parent, nn.Sequential):
            names = list(parent._modules)
            for conv_name, norm_name in zip(names, names[1:]):
                conv, norm = parent._modules[conv_name], parent._modules[norm_name]
                if type(conv) is nn.Conv2d and isinstance(norm, ABN) and conv.out_channels == norm.num_features:
                    yield parent, conv_name, norm_name
        elif isinstance(parent, ResidualBlock) and hasattr(parent, "proj_conv"):
            yield parent, "proj_conv", "proj_bn"


def check_deployable(model: nn.Module) -> None:
    """Reject what has no deployable form, before any copy is made."""
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"a deployable copy is made of a torch nn.Module, got {type(model).__name__}")
    shared = [name for name, count in module_counts(model).items() if count > 1]
    if shared:
        raise InvalidArgumentError(f"modules used at more than one place cannot be folded: {shared[:3]}")


def module_counts(model: nn.Module) -> dict[str, int]:
    """How often each norm-act layer or convolution of `model` appears in its module tree, by its first name."""
    counts: dict[int, int] = {}
    names: dict[int, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, (ABN, nn.Conv2d)):
            counts[id(module)] = counts.get(id(module), 0) + 1
            names.setdefault(id(module), name)
    return {names[key]: count for key, count in counts.items()}


def strip_fast_eval(model: nn.Module) -> None:
    """Remove every fast-eval override from a copy and keep the path off for good, so that its modules run their
    own class forwards whatever `eval()` or `train()` is called later."""
    for module in model.modules():
        if isinstance(module, ZooModule) or STATE_ATTR in module.__dict__:
            disable_fast_eval(module)
        module.__dict__.pop("forward", None)


def replace_leftovers(model: nn.Module, dtype: torch.dtype) -> None:
    """Norm-act layers not folded -> affine + activation, lean pooling -> nn.MaxPool2d, dropout -> identity."""
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, ABN):
                parent._modules[name] = standalone_norm(child, dtype)
            elif isinstance(child, LeanMaxPool2d):
                parent._modules[name] = nn.MaxPool2d(child.kernel_size, child.stride, child.padding)
            elif isinstance(child, DROPOUTS):
                parent._modules[name] = nn.Identity()
        if isinstance(parent, DenseModule):
            parent.memory_efficient = False  # no recomputation: the copy never runs backward


class Float32Head(nn.Module):
    """A classifier run in float32 inside a half-precision copy: the pooling and the last layer cost little, and
    rounding the logits themselves to bf16 would cost up to 4e-3 of their scale."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.float())


def keep_head_in_float32(model: nn.Module) -> None:
    """Wrap a zoo network's classifier (`classifier` = pooling + fc, or the segmentation `cls`) in `Float32Head`."""
    for name in ("classifier", "cls"):
        head = model._modules.get(name)
        if head is not None:
            model._modules[name] = Float32Head(head)
            return


def deployable_copy(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """A copy of `model` in eval mode made of standard modules that computes its eval-mode function (in `dtype`,
    default the model's own; in a half type the classifier stays float32): convolutions and the norm-act layers
    they feed folded, the rest affine + activation. The model itself is left as it was."""
    check_deployable(model)
    reference = next(model.parameters(), None)
    dtype = dtype or (reference.dtype if reference is not None else torch.float32)
    if not dtype.is_floating_point:
        raise InvalidArgumentError(f"a deployable copy needs a floating point dtype, got {dtype}")
    deployable = copy.deepcopy(model)
    strip_fast_eval(deployable)
    for parent, conv_name, norm_name in list(fold_pairs(deployable)):
        norm = parent._modules[norm_name]
        parent._modules[conv_name] = folded_conv(parent._modules[conv_name], norm, dtype)
        parent._modules[norm_name] = activation_after_fold(norm)
    replace_leftovers(deployable, dtype)
    deployable.to(dtype)
    if dtype.itemsize < 4:
        keep_head_in_float32(deployable)
    deployable.eval()
    deployable.requires_grad_(False)
    return deployable
