"""Mixed precision: under torch.autocast (bf16 on CPU) a training step with InPlace-ABN layers works on both
backends, keeps statistics in float32, writes over its bf16 input (no float32 copy) and lands as close to the
float64 result as standard BN under the same autocast does; `model.to(torch.bfloat16)` trains and infers."""

import copy

import pytest
import torch
from support.backends import BACKENDS as SUPPORT_BACKENDS
from support.numerics import assert_within_noise, noise_floor
from support.small_models import images, small_model

from iabn_zoo.layers import InPlaceABN, convert_norm, make_norm_act, ops

BACKENDS = ["auto", *SUPPORT_BACKENDS]


class ShallowNet(torch.nn.Module):
    """Three conv + norm-act layers, the last fusing a residual, on enough values per channel (batch 4, 16x16)
    that bf16 rounding stays a small, measurable noise."""

    def __init__(self, norm_act):
        super().__init__()
        self.conv1, self.bn1 = torch.nn.Conv2d(3, 16, 3, padding=1), norm_act(16)
        self.conv2, self.bn2 = torch.nn.Conv2d(16, 16, 3, padding=1), norm_act(16)
        self.conv3, self.bn3 = torch.nn.Conv2d(16, 16, 1), norm_act(16)

    def forward(self, x):
        h = self.bn1(self.conv1(x))
        return self.bn3(self.conv3(self.bn2(self.conv2(h))), h)


def shallow_net(backend):
    torch.manual_seed(0)
    model = ShallowNet(make_norm_act("inplace", backend=backend))
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, InPlaceABN):
                layer.weight.normal_(1.0, 0.5)  # some negative weights
                layer.bias.normal_(0.0, 0.2)
    return model


def step(model, x, dtype=None):
    """Output, input gradient and parameter gradients of one step, under autocast to `dtype` if given; the output
    gradient is the same numbers whatever the output's dtype."""
    x = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        out = model(x)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype))
    return [out.detach(), x.grad] + [p.grad for p in model.parameters()]


def assert_autocast_step_within_noise(inplace, x, what):
    """inplace under bf16 autocast against itself in float64, as close as standard BN under bf16 autocast is to
    standard BN in float64, for the output, the input gradient and every parameter gradient."""
    standard = convert_norm(copy.deepcopy(inplace), "standard")
    names = ["output", "input gradient"] + [name for name, _ in inplace.named_parameters()]
    ours, ours64 = step(inplace, x, torch.bfloat16), step(copy.deepcopy(inplace).double(), x.double())
    theirs, theirs64 = step(standard, x, torch.bfloat16), step(copy.deepcopy(standard).double(), x.double())
    assert ours[0].dtype == torch.bfloat16, f"{what}: autocast output is {ours[0].dtype}"
    for name, got, want, standard32, standard64 in zip(names, ours, ours64, theirs, theirs64):
        assert_within_noise(got, want, noise_floor(standard32, standard64), f"{what}: {name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_step_matches_standard_bn_noise(backend):
    model = shallow_net(backend)
    assert_autocast_step_within_noise(model, torch.randn(4, 3, 16, 16), f"shallow net, {backend}")
    for layer in model.modules():
        if isinstance(layer, InPlaceABN):
            assert layer.running_mean.dtype == layer.running_var.dtype == torch.float32


@pytest.mark.parametrize("family", ["resnext", "resnet", "densenet"])
def test_autocast_training_of_families(family):
    """Deep nets on a tiny batch: the noise floor is large, the comparison still catches a broken path."""
    model = small_model(family, "inplace", dtype=torch.float32)
    assert_autocast_step_within_noise(model, images(dtype=torch.float32, size=64), family)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_input_is_written_over_and_statistics_are_float32(backend):
    layer, standard = make_norm_act("inplace", backend=backend)(6), make_norm_act("standard")(6)
    x = torch.randn(4, 6, 5, 5).bfloat16()
    expected_mean = 0.1 * x.double().mean((0, 2, 3))  # from the bf16 values, exactly
    standard(x.clone())
    y = layer(x)
    assert y.data_ptr() == x.data_ptr() and y.dtype == torch.bfloat16, "the layer works on the bf16 tensor itself"
    assert layer.running_mean.dtype == layer.running_var.dtype == torch.float32
    floor = noise_floor(standard.running_mean, expected_mean)
    assert_within_noise(layer.running_mean, expected_mean, floor, f"{backend}: running mean of a bf16 batch")
    var = ops.inplace_abn_(torch.randn(4, 6, 5, 5).bfloat16(), layer.weight, layer.bias, None,
                           layer.running_mean.clone(), layer.running_var.clone(), True, 0.1, 1e-5, "leaky_relu",
                           0.01, backend)
    assert var.dtype == torch.float32


@pytest.mark.parametrize("family", ["resnet", "resnext"])
def test_model_in_bf16_trains_and_infers(family):
    model = small_model(family, "inplace", dtype=torch.float32)
    standard = convert_norm(copy.deepcopy(model), "standard")
    x = images(dtype=torch.float32, size=64)
    model16, standard16 = copy.deepcopy(model).to(torch.bfloat16), copy.deepcopy(standard).to(torch.bfloat16)
    ours, theirs = step(model16, x.bfloat16()), step(standard16, x.bfloat16())
    ours64, theirs64 = step(copy.deepcopy(model).double(), x.double()), step(copy.deepcopy(standard).double(),
                                                                             x.double())
    assert all(t.dtype == torch.bfloat16 for t in ours)
    assert all(b.dtype == torch.bfloat16 for b in model16.buffers() if b.is_floating_point())
    for index, (got, want, standard16_t, standard64_t) in enumerate(zip(ours, ours64, theirs, theirs64)):
        assert_within_noise(got, want, noise_floor(standard16_t, standard64_t), f"{family} bf16 step, tensor {index}")
    for net in (model, standard, model16, standard16):
        net.eval()
    with torch.no_grad():
        out16, ref64 = model16(x.bfloat16()), copy.deepcopy(model).double().eval()(x.double())
        floor = noise_floor(standard16(x.bfloat16()), copy.deepcopy(standard).double().eval()(x.double()))
    assert out16.dtype == torch.bfloat16
    assert_within_noise(out16, ref64, floor, f"{family} bf16 eval output")
