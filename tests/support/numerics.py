"""How the suite judges numerics, and one training step's tensors.

"Computes the same function" is judged in float64 (`assert_same_function`, `assert_same_step`): there, rounding
is ~1e-16 and any real difference stands out; `float64_tol` says how close (the compiled kernels keep a few scalars
in float32). A float32 result, where the code is float32 by design (packed oneDNN convolutions, the predictors), is
judged against a noise floor measured in the same test (`assert_as_close_as_standard`: the same computation done
the standard way, in float32, against float64), never against a constant that happened to pass on one CPU: other
machines pick other oneDNN kernels and round differently. Results that must differ do so by a stated margin
(`assert_differs`). Every message says what differs and by how much.
"""

import math

import torch
import torch.nn as nn

# float64 agreement allowed, relative to a tensor's scale. The compiled inplace_abn kernels keep some scalars
# (activation_param, eps, momentum) in float32 even for float64 tensors, which costs ~1e-7 (measured: 4e-8 for one
# layer, 1.2e-7 for resnext50 in training mode at batch 2, 64 px).
FLOAT64_TOL = 1e-6
# Pure float64 code (the torch backend, converted, folded or recomputed layers) agrees to ~1e-12, even through a deep
# network in training mode (measured: 8e-13 for resnext50 as above): anything above this is not rounding.
PURE_FLOAT64_TOL = 1e-10
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
    """max |actual - expected| relative to the expected tensor's own scale, 1 + its largest magnitude (the 1 keeps
    tensors that are zero but for rounding, such as the gradient of a bias that a batch norm follows, judged
    absolutely)."""
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


def float64_tol(*modules: nn.Module) -> float:
    """The float64 agreement to ask of networks built from these modules: FLOAT64_TOL where a norm-act layer runs the
    compiled kernels, PURE_FLOAT64_TOL where everything is float64 PyTorch code."""
    native = any(getattr(m, "backend", None) == "native" for module in modules for m in module.modules())
    return FLOAT64_TOL if native else PURE_FLOAT64_TOL


def assert_same_step(actual: tuple, expected: tuple, tol: float = FLOAT64_TOL) -> None:
    """Two `train_step` results (output, input gradient, parameter gradients), judged in float64 one by one."""
    (out_a, dx_a, grads_a), (out_b, dx_b, grads_b) = actual, expected
    assert_same_function(out_a, out_b, "output", tol)
    assert_same_function(dx_a, dx_b, "input gradient", tol)
    assert grads_a.keys() == grads_b.keys(), f"parameters differ: {sorted(grads_a.keys() ^ grads_b.keys())}"
    for name in grads_a:
        assert (grads_a[name] is None) == (grads_b[name] is None), f"{name}: a gradient on one side only"
        if grads_a[name] is not None:
            assert_same_function(grads_a[name], grads_b[name], f"gradient of {name}", tol)


def noise_floor(standard32: torch.Tensor, standard64: torch.Tensor) -> float:
    """The float32 rounding noise of a computation: the standard float32 result against float64, scaled."""
    return scaled_difference(standard32, standard64)


def assert_within_noise(actual32: torch.Tensor, reference64: torch.Tensor, floor: float, name: str = "",
                        factor: float = NOISE_FACTOR, terms: int = 1) -> None:
    """A float32 result lies as close to the float64 reference as the standard float32 computation does, up to
    `factor`, plus the rounding of a float32 sum of `terms` values (4 ulps x sqrt(terms), at the tensor's scale):
    a tensor of a few elements, such as a per-channel gradient, may land exactly by luck in the standard
    computation, and its floor then says nothing about another summation order."""
    difference = scaled_difference(actual32, reference64)
    slack = 4 * torch.finfo(torch.float32).eps * math.sqrt(terms)
    allowed = factor * floor + slack
    assert difference <= allowed, (
        f"{name or 'tensor'}: max |diff| from the float64 reference, scaled, is {difference:.3g}, above "
        f"{factor:g} x the noise floor {floor:.3g} (standard float32 against float64) + {slack:.3g} "
        f"(rounding of {terms} summed value(s)) = {allowed:.3g}")


def assert_as_close_as_standard(actual32: torch.Tensor, standard32: torch.Tensor, reference64: torch.Tensor,
                                name: str = "", factor: float = NOISE_FACTOR, terms: int = 1) -> None:
    """A float32 result judged against the float64 reference, with the noise floor measured here: how far the
    same computation done the standard way in float32 (`standard32`) lands from that reference."""
    assert actual32.dtype == standard32.dtype == torch.float32 and reference64.dtype == torch.float64, (
        f"{name or 'tensor'}: float32 results and a float64 reference expected, got {actual32.dtype}, "
        f"{standard32.dtype} and {reference64.dtype}")
    assert_within_noise(actual32, reference64, noise_floor(standard32, reference64), name, factor, terms)


def inversion_condition(weight: torch.Tensor, bias: torch.Tensor, eps: float) -> float:
    """How much InPlace-ABN's backward amplifies rounding over standard BN's: it recovers xhat = (y - b) / (|w| + eps)
    from its output y, whose rounding is at the scale of |y| <= (|w| + eps) |xhat| + |b|; for |xhat| ~ 1 the
    first-order error grows by 1 + |b| / (|w| + eps), at worst over the channels. (Leaky ReLU and identity; the
    inverse ELU is worse still near saturation.)"""
    return 1.0 + float((bias.detach().abs() / (weight.detach().abs() + eps)).max())


def assert_differs(actual: torch.Tensor, other: torch.Tensor, margin: float, name: str = "") -> None:
    """Two results that must not agree: they differ, relative to `other`'s scale, by more than `margin` (chosen far
    above any rounding, so that the check cannot pass on noise alone)."""
    difference = scaled_difference(actual, other)
    assert difference > margin, (
        f"{name or 'tensors'} should differ, but max |diff| / (1 + max |other|) = {difference:.3g} <= {margin:g}")


def assert_same_buffers(model, reference, what: str) -> None:
    """Every buffer of two models (running statistics, batch counts) equal: floats in float64, counts exactly."""
    for (name, ours), (_, theirs) in zip(model.named_buffers(), reference.named_buffers()):
        if ours.is_floating_point():
            assert_same_function(ours, theirs, f"{what}: buffer {name}")
        else:
            assert torch.equal(ours, theirs), f"{what}: buffer {name} is {ours.tolist()}, expected {theirs.tolist()}"
