"""Checks shared by the architecture tests: one training step's tensors, and closeness at a tensor's own scale."""

import torch
import torch.nn as nn


def train_step(model: nn.Module, x: torch.Tensor):
    """Output, input gradient and parameter gradients of one forward/backward with a fixed random output gradient
    (a constant one would give batch-normalised layers a zero gradient, all rounding noise)."""
    x = x.detach().clone().requires_grad_()
    out = model(x)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype))
    return out.detach(), x.grad, {name: p.grad for name, p in model.named_parameters()}


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-4, name: str = "") -> None:
    """Closeness relative to the tensor's scale (sums over a batch round at the scale of their largest element)."""
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * (1 + expected.abs().max().item()), msg=name)
