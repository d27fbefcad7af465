"""The kernels each call runs on: by default (`auto`) the compiled ones for CUDA tensors when the extension has CUDA
kernels and the torch ones on CPU, decided per call from the input; `native` wherever the compiled kernels take
the tensors; `torch` always. Calls the compiled kernels cannot take fall back to the torch kernels."""

import pytest
import torch
from support.backends import needs_native

from iabn_zoo.layers import make_norm_act, native_kernels
from iabn_zoo.layers.kernels import TorchKernels, kernels_for, kernels_name


def test_default_runs_the_torch_kernels_on_cpu():
    x = torch.randn(2, 3, 4, 4)
    assert kernels_for("auto", x) is TorchKernels
    assert kernels_for("torch", x) is TorchKernels
    default, forced = make_norm_act("inplace")(3), make_norm_act("inplace", backend="torch")(3)
    assert default.backend == "auto"
    assert torch.equal(default(x.clone()), forced(x.clone())), "auto on CPU computes exactly what torch does"
    assert torch.equal(default.running_var, forced.running_var)


@needs_native
def test_native_runs_the_compiled_kernels_where_they_take_the_tensors():
    native = native_kernels()
    x = torch.randn(2, 3, 4, 4)
    assert kernels_for("native", x, torch.ones(3)) is native
    assert kernels_for("native", x.double(), torch.ones(3, dtype=torch.float64)) is native
    for unsupported, why in [(x.bfloat16(), "bf16"), (x.half(), "fp16"),
                             (x.contiguous(memory_format=torch.channels_last), "channels-last"),
                             (x.transpose(2, 3), "strided view")]:
        assert kernels_for("native", unsupported) is TorchKernels, why
    assert kernels_for("native", x, torch.ones(3, dtype=torch.float64)) is TorchKernels, "mixed dtypes"


@needs_native
def test_native_layer_falls_back_per_call_and_keeps_its_choice():
    layer = make_norm_act("inplace", backend="native")(3)
    x = torch.randn(2, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    reference = make_norm_act("inplace", backend="torch")(3)
    assert torch.equal(layer(x.clone()), reference(x.clone())), "a call the kernels cannot take runs on torch's"
    assert layer.backend == "native"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_default_follows_the_input_to_cuda_and_back():
    native = native_kernels()
    layer = make_norm_act("inplace")(3)
    x = torch.randn(2, 3, 4, 4)
    expected = native if native is not None and native.has_cuda else TorchKernels
    assert kernels_for("auto", x.cuda(), layer.weight.cuda()) is expected
    assert kernels_for("auto", x) is TorchKernels
    layer.cuda()(x.cuda()).sum()
    layer.cpu()(x)


def test_rule_per_device():
    native = native_kernels()
    assert kernels_name("auto", "cpu") == "torch" and kernels_name("torch", "cuda") == "torch"
    assert kernels_name("auto", "cuda") == ("native" if native is not None and native.has_cuda else "torch")
    assert kernels_name("native", "cpu") == ("native" if native is not None else "torch")
