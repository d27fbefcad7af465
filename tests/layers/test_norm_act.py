"""The norm-act factory, layer contract, backend choice, bad input and the exact conversions of convert_norm."""

import copy
import os
import sys

import pytest
import torch
import torch.nn as nn
from support import forkserver
from support.backends import BACKENDS, needs_native
from support.numerics import (
    FLOAT64_TOL,
    PURE_FLOAT64_TOL,
    assert_as_close_as_standard,
    assert_close_scaled,
    assert_same_function,
    float64_tol,
)

from iabn_zoo.errors import InvalidArgumentError
from iabn_zoo.layers import (
    ABN,
    InPlaceABN,
    InPlaceABNSync,
    convert_norm,
    make_norm_act,
    native_kernels,
    resolve_backend,
)

# A few float32 ulps: the rounding of a handful of float32 operations, the same on every machine.
FLOAT32_ULPS = 4 * torch.finfo(torch.float32).eps
KEYS = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}


@pytest.mark.parametrize("bn_mode,cls", [("standard", ABN), ("inplace", InPlaceABN), ("sync", InPlaceABNSync)])
def test_factory_builds_layer_of_mode_with_authors_keys(bn_mode, cls):
    norm_act = make_norm_act(bn_mode, "elu", 0.5, momentum=0.2, eps=1e-4)
    layer = norm_act(6)
    assert type(layer) is cls and layer.bn_mode == bn_mode
    assert (layer.num_features, layer.activation, layer.activation_param, layer.momentum, layer.eps) == (
        6, "elu", 0.5, 0.2, 1e-4)
    assert set(layer.state_dict()) == KEYS
    last = norm_act(6, activation="identity")
    assert last.activation == "identity" and type(last) is cls
    other = norm_act(6, activation="leaky_relu")
    assert other.activation_param == 0.01, "an overridden activation gets its own default parameter"


def test_per_layer_override_changes_what_is_computed():
    norm_act = make_norm_act("inplace", "leaky_relu", 0.01, backend="torch")
    x = torch.randn(4, 3, 5, 5)
    assert (norm_act(3)(x.clone()) >= -0.1).all()
    assert (norm_act(3, activation="identity")(x.clone()) < -0.5).any()


def test_default_backend_is_auto_and_env_overrides(monkeypatch):
    assert resolve_backend() == "auto" and make_norm_act("inplace")(3).backend == "auto"
    monkeypatch.setenv("IABN_ZOO_BACKEND", "torch")
    assert make_norm_act("inplace")(3).backend == "torch"
    if native_kernels() is not None:
        assert make_norm_act("inplace", backend="native")(3).backend == "native", "the argument wins over the env"
    monkeypatch.setenv("IABN_ZOO_BACKEND", "cuda")
    with pytest.raises(InvalidArgumentError, match="IABN_ZOO_BACKEND.*'cuda'"):
        make_norm_act("inplace")


def test_unknown_backend_argument_is_refused():
    with pytest.raises(InvalidArgumentError, match="backend must be one of auto, native, torch, got 'fast'"):
        make_norm_act("inplace", backend="fast")
    with pytest.raises(InvalidArgumentError, match="backend"):
        InPlaceABN(3, backend="fast")


@pytest.mark.parametrize("kwargs,message", [
    (dict(bn_mode="batchnorm"), "bn_mode must be one of standard, inplace, sync, got 'batchnorm'"),
    (dict(activation="gelu"), "activation must be one of .* got 'gelu'"),
    (dict(activation="relu"), "'relu' cannot be inverted"),
    (dict(bn_mode="sync", activation="relu"), "'relu' cannot be inverted"),
    (dict(activation="leaky_relu", activation_param=0.0), "activation_param > 0"),
    (dict(activation="elu", activation_param=-1.0), "activation_param > 0"),
])
def test_bad_factory_arguments_raise_named_errors(kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message):
        make_norm_act(**kwargs)


def test_bad_per_layer_override_is_refused():
    with pytest.raises(InvalidArgumentError, match="'relu' cannot be inverted"):
        make_norm_act("inplace")(4, activation="relu")
    with pytest.raises(InvalidArgumentError, match="num_features"):
        make_norm_act("inplace")(0)


def test_relu_is_allowed_in_standard_mode():
    layer = make_norm_act("standard", "relu")(3)
    assert (layer(torch.randn(4, 3, 2, 2)) >= 0).all()


@pytest.mark.parametrize("bn_mode", ["standard", "inplace", "sync"])
def test_wrong_channel_count_names_it_and_leaves_input_intact(bn_mode):
    layer = make_norm_act(bn_mode)(4)
    x = torch.randn(2, 3, 5, 5)
    before = x.clone()
    with pytest.raises(InvalidArgumentError, match=r"\(N, 4, \.\.\.\), got \(2, 3, 5, 5\): wrong number of channels"):
        layer(x)
    assert torch.equal(x, before)
    with pytest.raises(InvalidArgumentError, match="got \\(4,\\)"):
        layer(torch.randn(4))


@pytest.mark.parametrize("bn_mode", ["standard", "inplace", "sync"])
def test_non_float_tensor_is_refused_with_its_dtype(bn_mode):
    layer = make_norm_act(bn_mode)(3)
    with pytest.raises(InvalidArgumentError, match="floating point tensor, got torch.int64"):
        layer(torch.ones(2, 3, 4, 4, dtype=torch.long))


def test_residual_shape_mismatch_is_refused():
    layer = make_norm_act("inplace")(3)
    with pytest.raises(InvalidArgumentError, match="residual of shape"):
        layer(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 5))


@pytest.mark.parametrize("bn_mode", ["standard", "inplace"])
def test_single_value_per_channel_in_training_is_refused(bn_mode):
    layer = make_norm_act(bn_mode)(3)
    x = torch.randn(1, 3, 1, 1)
    with pytest.raises(InvalidArgumentError, match="more than one value per channel"):
        layer(x)
    assert layer.eval()(x.clone()).shape == (1, 3, 1, 1)


@pytest.mark.parametrize("bn_mode", ["standard", "inplace"])
def test_eval_mode_uses_running_statistics_without_updating_them(bn_mode):
    layer = make_norm_act(bn_mode, "identity")(2)
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([1.0, -2.0]))
        layer.running_var.copy_(torch.tensor([4.0, 0.25]))
    layer.eval()
    x = torch.tensor([[1.0, -2.0], [3.0, -1.5]])
    y = layer(x.clone())
    scale = 1 + layer.eps if bn_mode == "inplace" else 1.0
    expected = (x - layer.running_mean) / torch.sqrt(layer.running_var + layer.eps) * scale
    # a few float32 roundings at the inputs' scale: far below the eps (1e-5) that the in-place scale adds
    assert_close_scaled(y, expected, tol=FLOAT32_ULPS, name="eval-mode output")
    assert torch.equal(layer.running_mean, torch.tensor([1.0, -2.0])) and int(layer.num_batches_tracked) == 0


def test_momentum_none_gives_cumulative_average():
    layer = make_norm_act("inplace", momentum=None, backend="torch")(2)
    batches = [torch.randn(6, 2) * 2 + i for i in range(3)]
    for batch in batches:
        layer(batch.clone())
    torch.testing.assert_close(layer.running_mean, torch.stack([b.mean(0) for b in batches]).mean(0))


def test_legacy_state_dict_without_num_batches_tracked_loads_strictly():
    layer = make_norm_act("inplace")(3)
    state = {k: v for k, v in make_norm_act("inplace")(3).state_dict().items() if k != "num_batches_tracked"}
    state["weight"] = torch.tensor([0.5, -1.0, 2.0])
    layer.load_state_dict(state, strict=True)
    assert torch.equal(layer.weight.detach(), state["weight"]) and int(layer.num_batches_tracked) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_sync_without_distributed_behaves_as_inplace(backend):
    torch.manual_seed(0)
    sync, plain = InPlaceABNSync(4, backend=backend), InPlaceABN(4, backend=backend)
    x, g = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    outputs = []
    for layer in (sync, plain):
        xi = x.clone().requires_grad_()
        y = layer(xi * 1.0)
        (y * g).sum().backward()
        outputs.append((y.detach(), xi.grad, layer.weight.grad, layer.running_var.clone()))
    for a, b, name in zip(*outputs, ("output", "input gradient", "weight gradient", "running_var")):
        assert torch.equal(a, b), f"{name}: the same kernels on the same tensors differ by {(a - b).abs().max():.3g}"


@needs_native
def test_native_and_torch_backends_agree_in_float32():
    """The same function in float64; in float32 each backend as close to float64 as standard BN, measured here."""
    torch.manual_seed(1)
    native, pure = InPlaceABN(8, backend="native"), InPlaceABN(8, backend="torch")
    with torch.no_grad():
        native.weight.normal_()
        pure.weight.copy_(native.weight)
    native64, pure64 = copy.deepcopy(native).double(), copy.deepcopy(pure).double()
    standard, standard64 = convert_norm(copy.deepcopy(pure), "standard"), convert_norm(copy.deepcopy(pure64), "standard")
    x = torch.randn(4, 8, 9, 9)
    reference = standard64(x.double())
    assert_same_function(native64(x.double()), reference, "native output (float64)", FLOAT64_TOL)
    assert_same_function(pure64(x.double()), reference, "torch output (float64)", PURE_FLOAT64_TOL)
    standard32 = standard(x.clone())
    count = x.numel() // x.shape[1]
    assert_as_close_as_standard(native(x.clone()), standard32, reference, "native output (float32)", terms=count)
    assert_as_close_as_standard(pure(x.clone()), standard32, reference, "torch output (float32)", terms=count)


def random_net(bn_mode, weight_floor=None):
    """A small conv net with norm-act layers (one shared, one at a nested path) and random parameters."""
    norm_act = make_norm_act(bn_mode, backend="torch")
    shared = norm_act(4)
    inner = nn.Sequential(nn.Conv2d(4, 4, 1), norm_act(4, activation="identity"))
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), shared, inner, shared)
    with torch.no_grad():
        for layer in net.modules():
            if isinstance(layer, ABN):
                layer.weight.normal_()
                if weight_floor is not None:
                    layer.weight.abs_().add_(weight_floor)
                layer.bias.normal_()
                layer.running_mean.normal_()
                layer.running_var.uniform_(0.5, 2)
    return net


def outputs_of(net, x, training):
    net.train(training)
    snapshot = {k: v.clone() for k, v in net.state_dict().items()}
    y = net(x.clone())
    net.load_state_dict(snapshot)  # undo the running statistics update
    return y


@pytest.mark.parametrize("source,target", [("inplace", "standard"), ("inplace", "sync"), ("sync", "inplace"),
                                           ("standard", "inplace"), ("standard", "sync")])
def test_convert_norm_is_exact(source, target):
    """Judged in float64, where the conversions' arithmetic (|w| + eps, w - eps) costs nothing but rounding."""
    torch.manual_seed(2)
    net = random_net(source, weight_floor=1e-3 if source == "standard" else None).double()
    x = torch.randn(2, 3, 6, 6).double()
    before = [outputs_of(net, x, training) for training in (True, False)]
    converted = convert_norm(net, target)
    assert converted is net
    layers = [m for m in net.modules() if isinstance(m, ABN)]
    assert layers and all(m.bn_mode == target for m in layers)
    assert net[1] is net[3], "a shared layer stays shared"
    after = [outputs_of(net, x, training) for training in (True, False)]
    for a, b, mode in zip(before, after, ("training", "eval")):  # converted from standard: the default backend
        assert_same_function(b, a, f"{mode}-mode output after conversion", float64_tol(net))


def test_convert_inplace_to_standard_uses_abs_weight_plus_eps():
    layer = InPlaceABN(3, eps=1e-3, backend="torch")
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([-2.0, 0.0, 0.5]))
    standard = convert_norm(layer, "standard")
    assert type(standard) is ABN
    torch.testing.assert_close(standard.weight.detach(), torch.tensor([2.001, 0.001, 0.501]), rtol=FLOAT32_ULPS,
                               atol=0)  # one float32 addition
    assert set(standard.state_dict()) == KEYS


def test_convert_keeps_requires_grad_dtype_and_mode():
    net = random_net("inplace").double()
    net[2][1].weight.requires_grad_(False)
    net.eval()
    convert_norm(net, "standard")
    layer = net[2][1]
    assert type(layer) is ABN and layer.weight.dtype == torch.float64 and not layer.weight.requires_grad
    assert layer.bias.requires_grad and not layer.training


def test_convert_standard_to_inplace_refuses_inexact_and_changes_nothing():
    net = random_net("standard", weight_floor=1e-3)
    with torch.no_grad():
        net[2][1].weight[:3] = torch.tensor([-1.0, 0.0, 5e-6])
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(InvalidArgumentError, match=r"3 channel\(s\) in 1 layer\(s\) have weight < eps.*2\.1 \(3\)"):
        convert_norm(net, "inplace")
    assert all(type(m) is ABN for m in net.modules() if isinstance(m, ABN))
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


def test_convert_standard_relu_to_inplace_is_refused():
    net = nn.Sequential(nn.Conv2d(3, 3, 1), make_norm_act("standard", "relu")(3))
    with pytest.raises(InvalidArgumentError, match="cannot convert layer '1' to inplace.*relu"):
        convert_norm(net, "inplace")


def test_convert_roundtrip_restores_weights():
    layer = InPlaceABN(5, backend="torch")
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([-3.0, -1e-7, 0.0, 1e-6, 2.0]))
    back = convert_norm(convert_norm(layer, "standard"), "inplace")
    torch.testing.assert_close((back.weight.abs() + back.eps).detach(), layer.weight.abs().detach() + layer.eps,
                               rtol=FLOAT32_ULPS, atol=0)  # three float32 roundings at the scale of |w| + eps


def test_convert_sets_backend_and_rejects_bad_arguments():
    net = random_net("inplace")
    convert_norm(net, "inplace", backend="torch")
    assert all(m.backend == "torch" for m in net.modules() if isinstance(m, InPlaceABN))
    with pytest.raises(InvalidArgumentError, match="bn_mode"):
        convert_norm(net, "groupnorm")
    with pytest.raises(InvalidArgumentError, match="backend"):
        convert_norm(net, "sync", backend="cuda")
    assert all(type(m) is InPlaceABN for m in net.modules() if isinstance(m, ABN))


def test_leaf_input_requiring_grad_is_not_overwritten():
    layer = make_norm_act("inplace", backend="torch")(3)
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    before = x.detach().clone()
    layer(x).sum().backward()
    assert torch.equal(x.detach(), before) and x.grad is not None


def test_without_compiled_package_default_is_torch_and_native_is_refused():
    """A process where `inplace_abn` cannot be imported, as on a machine where the extension did not build."""
    script = (
        "import sys; sys.modules['inplace_abn'] = None\n"
        "from iabn_zoo.errors import InvalidArgumentError\n"
        "from iabn_zoo.layers import make_norm_act\n"
        "import torch\n"
        "layer = make_norm_act('inplace')(3)\n"
        "assert layer.backend == 'auto', layer.backend\n"
        "layer(torch.randn(2, 3, 4, 4))\n"
        "try:\n"
        "    make_norm_act('inplace', backend='native')\n"
        "except InvalidArgumentError as error:\n"
        "    print(error)\n"
    )
    result = forkserver.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert "backend 'native' needs the compiled inplace-abn package" in result.stdout


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [True, False])
def test_expanded_input_is_copied_not_written_over(backend, training):
    layer = make_norm_act("inplace", backend=backend)(4).double().train(training)
    base = torch.randn(1, 4, 1, 1, dtype=torch.float64)
    x = base.expand(2, 4, 3, 3)
    out = layer(x)
    reference = make_norm_act("inplace", backend=backend)(4).double().train(training)(x.contiguous())
    assert_same_function(out, reference, "output of the expanded input", float64_tol(layer))
    assert torch.equal(x, base.expand(2, 4, 3, 3)), "the expanded input was written over"
