"""Norm-act layers (BatchNorm + activation) in three modes, and the factory every architecture builds them with.

`standard` is BatchNorm followed by the activation; `inplace` is InPlace-ABN (scale |w| + eps, the output overwrites
the input and is all that backward keeps); `sync` is InPlace-ABN with statistics shared over a torch.distributed
group. InPlace-ABN runs on the compiled `inplace_abn` kernels (backend `native`), on pure PyTorch (`torch`) or, by
default (`auto`), on whichever is faster for the device of each call's input (`kernels.kernels_for`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InvalidArgumentError
from .activations import DEFAULT_ACTIVATION_PARAMS, activate_, check_activation
from .iabn_function import inplace_abn
from .kernels import resolve_backend
from .sync_stats import active_group

BN_MODES = ("standard", "inplace", "sync")


def check_bn_mode(bn_mode: str) -> str:
    """Validate a bn_mode name."""
    if bn_mode not in BN_MODES:
        raise InvalidArgumentError(f"bn_mode must be one of {', '.join(BN_MODES)}, got {bn_mode!r}")
    return bn_mode


class ABN(nn.Module):
    """Standard BatchNorm followed by an activation; the base of the InPlace-ABN layers (same parameters and keys)."""

    bn_mode = "standard"

    def __init__(self, num_features: int, *, activation: str = "leaky_relu", activation_param: float = 0.01,
                 momentum: float | None = 0.1, eps: float = 1e-5):
        super().__init__()
        if not isinstance(num_features, int) or num_features <= 0:
            raise InvalidArgumentError(f"num_features must be a positive integer, got {num_features!r}")
        self.num_features = num_features
        self.activation = activation
        self.activation_param = check_activation(activation, activation_param, self.bn_mode)
        self.momentum = momentum
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def reset_parameters(self) -> None:
        """Weight 1, bias 0, running statistics of a unit Gaussian."""
        with torch.no_grad():
            self.weight.fill_(1)
            self.bias.zero_()
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def check_input(self, x: torch.Tensor, residual: torch.Tensor | None) -> None:
        """Reject inputs the layer cannot take, naming the problem."""
        name = type(self).__name__
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            kind = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise InvalidArgumentError(f"{name} needs a floating point tensor, got {kind}; convert it with .float()")
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise InvalidArgumentError(
                f"{name}({self.num_features}) expects input of shape (N, {self.num_features}, ...), got "
                f"{tuple(x.shape)}: wrong number of channels")
        if residual is not None and residual.shape != x.shape:
            raise InvalidArgumentError(
                f"{name}: residual of shape {tuple(residual.shape)} does not match input of shape {tuple(x.shape)}")

    def check_batch(self, x: torch.Tensor) -> None:
        """Batch statistics need more than one value per channel."""
        if self.training and x.numel() // x.shape[1] <= 1:
            raise InvalidArgumentError(
                f"{type(self).__name__} needs more than one value per channel in training mode, got input of shape "
                f"{tuple(x.shape)}; use a larger batch or spatial size, or call .eval()")

    def step_momentum(self) -> float:
        """Count this training batch and return the momentum of the running statistics (cumulative if None)."""
        if not self.training:
            return 0.0
        self.num_batches_tracked.add_(1)
        return 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """act(bn(x) + residual), out of place; `residual` is optional."""
        self.check_input(x, residual)
        self.check_batch(x)
        momentum = self.step_momentum()
        out = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training, momentum,
                           self.eps)
        if residual is not None:
            out = out.add_(residual)
        return activate_(out, self.activation, self.activation_param)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Checkpoints written before PyTorch 0.4.1 have no num_batches_tracked.
        state_dict.setdefault(prefix + "num_batches_tracked", torch.tensor(0, dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        param = f"[{self.activation_param:g}]" if self.activation in ("leaky_relu", "elu") else ""
        return f"{self.num_features}, eps={self.eps:g}, momentum={self.momentum}, activation={self.activation}{param}"


class InPlaceABN(ABN):
    """InPlace-ABN: y = act((x - mean) / std * (|w| + eps) + b), written over x; backward keeps only y.

    The input is overwritten: pass a tensor nothing else needs (a convolution's output is the usual case).
    """

    bn_mode = "inplace"

    def __init__(self, num_features: int, *, activation: str = "leaky_relu", activation_param: float = 0.01,
                 momentum: float | None = 0.1, eps: float = 1e-5, backend: str | None = None):
        super().__init__(num_features, activation=activation, activation_param=activation_param, momentum=momentum,
                         eps=eps)
        self.backend = resolve_backend(backend)

    def sync_group(self) -> Any:
        """The distributed group the batch statistics are shared over; None: this process's batch only."""
        return None

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """act(bn(x) + residual) computed in place in x; `residual` is optional and left untouched."""
        self.check_input(x, residual)
        group = self.sync_group() if self.training else None
        if group is None:
            self.check_batch(x)
        if (x.requires_grad and x.is_leaf and torch.is_grad_enabled()) or is_broadcast(x):
            x = x.clone()  # autograd forbids writing over a leaf that requires grad; an expanded view has no room
        return inplace_abn(x, self.weight, self.bias, residual, self.running_mean, self.running_var, self.training,
                           self.step_momentum(), self.eps, self.activation, self.activation_param, self.backend, group)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend}"


def is_broadcast(x: torch.Tensor) -> bool:
    """Whether several elements of `x` share memory (an expanded view), so it cannot be written over in place."""
    return any(stride == 0 and size > 1 for stride, size in zip(x.stride(), x.shape))


class InPlaceABNSync(InPlaceABN):
    """InPlace-ABN with batch statistics shared over `group` (default: the default process group) whenever
    torch.distributed is initialised; plain InPlace-ABN otherwise. Ranks may hold different batch sizes."""

    bn_mode = "sync"

    def __init__(self, num_features: int, *, activation: str = "leaky_relu", activation_param: float = 0.01,
                 momentum: float | None = 0.1, eps: float = 1e-5, backend: str | None = None, group: Any = None):
        super().__init__(num_features, activation=activation, activation_param=activation_param, momentum=momentum,
                         eps=eps, backend=backend)
        self.group = group

    def sync_group(self) -> Any:
        return active_group(self.group)


LAYER_CLASSES: dict[str, type[ABN]] = {"standard": ABN, "inplace": InPlaceABN, "sync": InPlaceABNSync}


@dataclass(frozen=True)
class NormActFactory:
    """Builds the norm-act layer of one bn_mode; an architecture calls it once per layer."""

    bn_mode: str
    activation: str
    activation_param: float
    backend: str
    group: Any
    momentum: float | None
    eps: float

    def __call__(self, num_features: int, *, activation: str | None = None,
                 activation_param: float | None = None) -> ABN:
        """A layer for `num_features` channels; `activation` (and its parameter) override the factory's."""
        activation = self.activation if activation is None else activation
        if activation_param is None:
            activation_param = (self.activation_param if activation == self.activation
                                else DEFAULT_ACTIVATION_PARAMS.get(activation, 0.0))
        common = dict(activation=activation, activation_param=activation_param, momentum=self.momentum,
                      eps=self.eps)
        if self.bn_mode == "standard":
            return ABN(num_features, **common)
        if self.bn_mode == "inplace":
            return InPlaceABN(num_features, backend=self.backend, **common)
        return InPlaceABNSync(num_features, backend=self.backend, group=self.group, **common)


def make_norm_act(bn_mode: str = "inplace", activation: str = "leaky_relu", activation_param: float = 0.01, *,
                  backend: str | None = None, group: Any = None, momentum: float | None = 0.1,
                  eps: float = 1e-5) -> NormActFactory:
    """The layer constructor every architecture uses: `norm_act(num_features, *, activation=None, ...)`."""
    check_bn_mode(bn_mode)
    activation_param = check_activation(activation, activation_param, bn_mode)
    return NormActFactory(bn_mode, activation, activation_param, resolve_backend(backend), group, momentum, eps)
