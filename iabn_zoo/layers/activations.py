"""The activations of the norm-act layers: names, default parameters, validation, in-place application and, for
the invertible ones InPlace-ABN needs, recovering the activation's input and gradient from its output."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InvalidArgumentError

ACTIVATIONS = ("leaky_relu", "elu", "identity", "relu")
INVERTIBLE_ACTIVATIONS = ("leaky_relu", "elu", "identity")
DEFAULT_ACTIVATION_PARAMS = {"leaky_relu": 0.01, "elu": 1.0, "identity": 0.0, "relu": 0.0}


def check_activation(activation: str, activation_param: float, bn_mode: str) -> float:
    """Validate an activation for a bn_mode; InPlace-ABN needs one it can invert. Returns the parameter as float."""
    if activation not in ACTIVATIONS:
        raise InvalidArgumentError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    if bn_mode != "standard":
        if activation not in INVERTIBLE_ACTIVATIONS:
            raise InvalidArgumentError(
                f"activation {activation!r} cannot be inverted, which bn_mode {bn_mode!r} needs; use leaky_relu, elu "
                f"or identity, or bn_mode='standard'")
        if activation in ("leaky_relu", "elu") and not activation_param > 0:
            raise InvalidArgumentError(
                f"{activation} with bn_mode {bn_mode!r} needs activation_param > 0 to be invertible, "
                f"got {activation_param!r}")
    return float(activation_param)


def activate(x: torch.Tensor, activation: str, activation_param: float, inplace: bool = False) -> torch.Tensor:
    """Apply one of the norm-act activations to `x`, out of place (what an exported graph holds) or in place."""
    if activation == "leaky_relu":
        return F.leaky_relu(x, activation_param, inplace)
    if activation == "elu":
        return F.elu(x, activation_param, inplace)
    if activation == "relu":
        return F.relu(x, inplace)
    if activation == "identity":
        return x
    raise InvalidArgumentError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")


def activate_(x: torch.Tensor, activation: str, activation_param: float) -> torch.Tensor:
    """Apply one of the norm-act activations to `x` in place; returns `x`."""
    return activate(x, activation, activation_param, inplace=True)


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
