"""How the suite judges numerics, and one training step's tensors.

"Computes the same function" is judged in float64 (`assert_same_function`): there, rounding is ~1e-16 and any
real difference stands out. A float32 result is judged against a noise floor measured in the same test
(`noise_floor`: the same computation done the standard way, in float32, against float64), never against a
constant that happened to pass on one CPU: other machines pick other oneDNN kernels and round differently.
"""

import torch
import torch.nn as nn

# float64 agreement allowed, relative to a tensor's scale. The compiled inplace_abn kernels keep some scalars
# (eps, momentum) in float32 even for float64 tensors, which costs ~1e-7; pure float64 code agrees to ~1e-12.
FLOAT64_TOL = 1e-6
# How far above the measured noise floor a float32 result may land: the method under test rounds differently
# from the standard one (other operation order), not worse by more than this factor.
NOISE_FACTOR = 8.0


def train_step(model: nn.Module, x: torch.Tensor):
    """Output, input gradient and parameter gradients of one forward/backward with a fixed random output gradient
    (a constant one would give batch-normalised layers a zero gradient, all rounding noise)."""
    x = x.detach().clone().requires_grad_()
    out = model(x)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype))
    return out.detach(), x.grad, {name: p.grad for name, p in model.named_parameters()}


def scaled_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| relative to the expected tensor's own scale (its largest magnitude, at least 1)."""
    difference = (actual.double() - expected.double()).abs().max().item() if actual.numel() else 0.0
    return difference / (1.0 + (expected.double().abs().max().item() if expected.numel() else 0.0))


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, tol: float = FLOAT64_TOL,
                        name: str = "") -> None:
    """Closeness relative to the tensor's scale (sums over a batch round at the scale of their largest element)."""
    assert actual.shape == expected.shape, f"{name or 'tensor'}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    difference = scaled_difference(actual, expected)
    assert difference <= tol, (
        f"{name or 'tensor'} differs: max |diff| / (1 + max |expected|) = {difference:.3g} > {tol:g} "
        f"(max |expected| {expected.abs().max().item():.3g}, dtype {actual.dtype})")


def assert_same_function(actual: torch.Tensor, expected: torch.Tensor, name: str = "",
                         tol: float = FLOAT64_TOL) -> None:
    """Exactness up to rounding, judged in float64: both tensors must be float64 results."""
    assert actual.dtype == expected.dtype == torch.float64, (
        f"{name or 'tensor'}: exactness is judged in float64, got {actual.dtype} and {expected.dtype}")
    assert_close_scaled(actual, expected, tol=tol, name=name)


def noise_floor(standard32: torch.Tensor, standard64: torch.Tensor) -> float:
    """The float32 rounding noise of a computation: the standard float32 result against float64, scaled."""
    return scaled_difference(standard32, standard64)


def assert_within_noise(actual32: torch.Tensor, reference64: torch.Tensor, floor: float, name: str = "",
                        factor: float = NOISE_FACTOR) -> None:
    """A float32 result lies as close to the float64 reference as the standard float32 computation does, up to
    `factor` (plus a few float32 ulps at the tensor's scale, for a floor that is exactly zero)."""
    difference = scaled_difference(actual32, reference64)
    allowed = factor * floor + 4 * torch.finfo(torch.float32).eps
    assert difference <= allowed, (
        f"{name or 'tensor'}: max |diff| from the float64 reference, scaled, is {difference:.3g}, above "
        f"{factor:g} x the noise floor {floor:.3g} (standard float32 against float64) = {allowed:.3g}")
