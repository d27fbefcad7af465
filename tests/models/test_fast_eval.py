"""The eval fast path computes what the InPlace-ABN layers compute, and train() gives the memory-saving layers back."""

from __future__ import annotations

import copy
import gc
import pickle
import weakref
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
from support.backends import BACKENDS, needs_native
from support.numerics import assert_as_close_as_standard, assert_differs, assert_same_function, float64_tol
from support.small_networks import randomize_norms

import iabn_zoo
from iabn_zoo.errors import InvalidArgumentError
from iabn_zoo.layers import ABN, InPlaceABN, convert_norm, make_norm_act
from iabn_zoo.models import _fast_eval as fastpath
from iabn_zoo.models._fast_eval import (
    FoldedPair,
    PackedConv,
    disable_fast_eval,
    enable_fast_eval,
    eval_affine,
    fast_eval_state,
    is_fast_eval_enabled,
)


def as_list(outputs) -> list[torch.Tensor]:
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def fresh(t: torch.Tensor) -> torch.Tensor:
    """A copy of `t` with its strides (a strided view stays strided), for a forward that may write over it."""
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype).copy_(t)


def float64_run(module: nn.Module, *inputs: torch.Tensor) -> list[torch.Tensor]:
    """`module`'s outputs in float64, from a float64 copy (the original keeps its float32 caches)."""
    with torch.no_grad():
        return as_list(copy.deepcopy(module).double()(*(t.double() for t in inputs)))


def assert_matches_reference(model: nn.Module, reference: nn.Module, *inputs: torch.Tensor):
    """The fast path computes the layers' own eval function: in float64 (folded, never packed) up to rounding, and in
    float32 (packed oneDNN convolutions, float32 only) as close to float64 as the layers' own float32 forward is.
    Returns the float32 output, and the layers' float32 and float64 outputs for further calls."""
    with torch.no_grad():
        expected = as_list(reference(*(fresh(t) for t in inputs)))
        outputs = model(*(fresh(t) for t in inputs))
    expected64 = float64_run(reference, *inputs)
    for index, (ours64, theirs64) in enumerate(zip(float64_run(model, *inputs), expected64, strict=True)):
        assert_same_function(ours64, theirs64, f"float64 output {index}", float64_tol(model, reference))
    assert_within_layers_noise(outputs, expected, expected64)
    return outputs, expected, expected64


def assert_within_layers_noise(outputs, expected: list[torch.Tensor], expected64: list[torch.Tensor]) -> None:
    """float32 fast-path outputs against the float64 reference, with the layers' own float32 forward as the floor."""
    for index, (ours, theirs, theirs64) in enumerate(zip(as_list(outputs), expected, expected64, strict=True)):
        assert_as_close_as_standard(ours, theirs, theirs64, f"float32 output {index}")


def reference_copy(model: nn.Module) -> nn.Module:
    """The same network with the fast path disabled: its norm-act layers run their own eval forward."""
    reference = copy.deepcopy(model)
    disable_fast_eval(reference)
    return reference.eval()


def fast_path_cache_owners(model: nn.Module) -> list:
    """The fast-path objects (pairs, lone norms, packed convolutions) that built a cache in `model`."""
    owners = {id(fn.__self__): fn.__self__ for _, fn in fast_eval_state(model).overridden}
    return [owner for owner in owners.values() if owner.cache is not None]


def fast_path_caches(model: nn.Module) -> list:
    """The cached affines and folded weights the fast path built: proof that it ran, not the layers' own forward."""
    return [owner.cache for owner in fast_path_cache_owners(model)]


def packed_convs(model: nn.Module) -> tuple[int, int]:
    """How many (folded, lone) convolutions ran on a packed oneDNN weight, checking that no grouped one did."""
    counts = [0, 0]
    for _, fn in fast_eval_state(model).overridden:
        owner = fn.__self__
        if isinstance(owner, (FoldedPair, PackedConv)) and owner.cache is not None:
            packed = owner.cache[1].is_mkldnn
            assert not packed or owner.conv.groups == 1
            counts[isinstance(owner, PackedConv)] += packed
    return counts[0], counts[1]


def stack(bn_mode: str, backend: str, activation: str = "leaky_relu", param: float = 0.01) -> nn.Sequential:
    """A small network of our own: folded pairs (with and without conv bias, grouped, 1x1), a lone norm layer, a
    lone 1x1 convolution."""
    norm_act = make_norm_act(bn_mode, activation, param, backend=backend)
    return randomize_norms(nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 8, 3, padding=1)),
        ("bn1", norm_act(8)),
        ("conv2", nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4, bias=False)),
        ("bn2", norm_act(8, activation="identity")),
        ("pool", nn.MaxPool2d(2)),
        ("bn3", norm_act(8)),
        ("conv3", nn.Conv2d(8, 4, 1)),
        ("conv4", nn.Conv2d(4, 6, 1)),
        ("bn4", norm_act(6)),
    ])))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bn_mode", ["inplace", "sync", "standard"])
@pytest.mark.parametrize("activation,param", [("leaky_relu", 0.01), ("elu", 1.0), ("identity", 0.0)])
def test_stack_matches_layers_in_eval(bn_mode, backend, activation, param):
    model = stack(bn_mode, backend, activation, param).eval()
    reference = reference_copy(model)
    enable_fast_eval(model)
    x = torch.randn(2, 3, 12, 12)
    out, _, _ = assert_matches_reference(model, reference, x)
    assert out.is_contiguous()
    pairs = [p for m, p in fast_eval_state(model).overridden if isinstance(getattr(p, "__self__", None), FoldedPair)]
    assert {pair.__self__.conv_name for pair in pairs} == {"conv1", "conv2", "conv4"}
    assert all(pair.__self__.cache is not None for pair in pairs)  # the folded weights were used
    assert packed_convs(model) == (2, 1)  # conv1 and conv4 folded and packed, conv3 packed; grouped conv2 not


@pytest.mark.parametrize("no_packing", ["op missing", "nchw input"])
def test_packing_falls_back_to_the_folded_path(no_packing, monkeypatch):
    model = stack("inplace", "torch").eval()
    reference = reference_copy(model)
    if no_packing == "op missing":
        monkeypatch.setattr(fastpath, "PACKING_AVAILABLE", False)
        enable_fast_eval(model)
    else:
        enable_fast_eval(model, channels_last=False)
    x = torch.randn(2, 3, 12, 12)
    out, _, _ = assert_matches_reference(model, reference, x)
    assert out.is_contiguous()
    assert packed_convs(model) == (0, 0) and len(fast_path_caches(model)) > 0


@needs_native
def test_packed_weights_follow_input_size_and_weight_changes():
    model = stack("inplace", "native").eval()
    enable_fast_eval(model)
    with torch.no_grad():
        for size, changed in ((12, False), (16, False), (16, True)):
            if changed:  # in place, in eval: the packed copies must follow
                model.conv3.weight.mul_(-2)
                model.conv4.weight.add_(0.5)
            x = torch.randn(2, 3, size, size)
            assert_matches_reference(model, reference_copy(model), x)
            assert packed_convs(model) == (2, 1)


def test_train_drops_the_packed_weights():
    model = iabn_zoo.create_model("resnet50", num_classes=3).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    owners = {fn.__self__ for _, fn in fast_eval_state(model).overridden}
    packed = [weakref.ref(owner.cache[1]) for owner in owners
              if isinstance(owner, (FoldedPair, PackedConv)) and owner.cache is not None and owner.cache[1].is_mkldnn]
    assert len(packed) > 0
    del owners
    model.train()
    gc.collect()
    assert all(ref() is None for ref in packed)


@pytest.mark.parametrize("bn_mode", ["inplace", "standard"])
def test_eval_affine_follows_the_layer_formula(bn_mode):
    layer = randomize_norms(make_norm_act(bn_mode, "identity", backend="torch")(5)).eval()
    scale, shift = eval_affine(layer)
    weight = layer.weight.abs() + layer.eps if bn_mode == "inplace" else layer.weight
    expected_scale = weight / torch.sqrt(layer.running_var + layer.eps)
    torch.testing.assert_close(scale, expected_scale)
    torch.testing.assert_close(shift, layer.bias - layer.running_mean * expected_scale)
    x = torch.randn(3, 5, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(layer(x.clone()), x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1))


# Each family through its shallowest architecture: the same layers as the deeper ones, fewer times (a float64 run
# of a full-size Wide ResNet held 4.5 GiB).
FAMILIES = [  # arch, options, input size, whether folded convolutions are packed (lone ones are in every family)
    ("resnext50", {}, 64, True),
    ("wider_resnet16", {}, 64, True),
    ("resnet50", {}, 64, True),
    ("resnet18", {"memory_efficient": False}, 64, True),  # unfused residual: identity BN, add, activation
    ("densenet121", {"growth": 8}, 64, False),  # norm-act before conv: nothing to fold
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch,options,size,folded_packed", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_every_family_matches_inplace_abn_in_eval(arch, options, size, folded_packed, backend):
    model = randomize_norms(iabn_zoo.create_model(arch, bn_mode="inplace", backend=backend, num_classes=10, **options))
    reference = reference_copy(model)
    model.eval()
    assert is_fast_eval_enabled(model)
    x = torch.randn(1, 3, size, size)  # one image: eval mode, and the float64 runs of the wide nets cost seconds
    assert_matches_reference(model, reference, x)
    assert len(fast_path_caches(model)) > 0
    folded, lone = packed_convs(model)
    assert lone > 0 and (folded > 0) == folded_packed


def test_families_fold_the_convolutions_before_their_norm_layers():
    model = iabn_zoo.create_model("resnext50", num_classes=10).eval()
    pairs = {id(getattr(fn, "__self__", None)) for _, fn in fast_eval_state(model).overridden
             if isinstance(getattr(fn, "__self__", None), FoldedPair)}
    # two per bottleneck block (conv1->bn2, conv2->bn3) and two in the 3x3 stem
    assert len(pairs) == 2 * (3 + 4 + 6 + 3) + 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_segmentation_network_matches_in_eval(backend):
    # The Vistas network's layers and arguments on the shallowest A2 body (DeepLabV3 on WRN16-A2).
    model = randomize_norms(iabn_zoo.create_model("deeplabv3_wider_resnet16_a2", num_classes=5, pooling_size=4,
                                                  backend=backend))
    reference = reference_copy(model)
    disable_fast_eval(reference.body)
    model.eval()
    x = torch.randn(1, 3, 48, 48)
    out, expected, expected64 = assert_matches_reference(model, reference, x)
    assert out.shape == (1, 5, 6, 6)
    assert "forward" in model.head.red_bn.__dict__  # eval() put the head on the fast path, the body stays its own
    assert all(m is not model.body.bn_out for m, _ in fast_eval_state(model).overridden)
    with torch.no_grad():
        assert_within_layers_noise(model(x.clone()), expected, expected64)
        model.train()
        model.eval()
        assert_within_layers_noise(model(x.clone()), expected, expected64)


def test_features_only_outputs_match_and_are_contiguous():
    model = randomize_norms(iabn_zoo.create_model("resnext50", features_only=True))
    reference = reference_copy(model)
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    outputs, expected, _ = assert_matches_reference(model, reference, x)
    assert len(outputs) == len(expected) == 4
    assert all(out.is_contiguous() for out in outputs)


@needs_native
def test_train_restores_memory_saving_layers_with_same_parameters():
    torch.manual_seed(0)
    model = randomize_norms(iabn_zoo.create_model("resnet18", num_classes=4, backend="native"))
    twin = copy.deepcopy(model)  # never sees eval()
    norm_layers = {name: m for name, m in model.named_modules() if isinstance(m, ABN)}
    parameters = [id(p) for p in model.parameters()]
    buffers = [id(b) for b in model.buffers()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    twin_optimizer = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    x, target = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])

    train_keys = list(model.state_dict())
    model.eval()
    with torch.no_grad():
        model(x.clone())
    eval_state = model.state_dict()
    assert list(eval_state) == train_keys
    model.train()

    assert [id(p) for p in model.parameters()] == parameters and [id(b) for b in model.buffers()] == buffers
    for name, layer in model.named_modules():
        assert "forward" not in layer.__dict__, name
        if name in norm_layers:
            assert layer is norm_layers[name] and type(layer) is InPlaceABN
    for net, opt in ((model, optimizer), (twin, twin_optimizer)):  # the step in float64: judged as the same function
        net.double()
        opt.zero_grad()
        nn.functional.cross_entropy(net(x.double()), target).backward()
        opt.step()
    for (name, ours), theirs in zip(model.state_dict().items(), twin.state_dict().values()):
        if ours.is_floating_point():
            assert_same_function(ours, theirs, name, float64_tol(model))
        else:
            assert torch.equal(ours, theirs), f"{name}: {ours.tolist()} != {theirs.tolist()}"
    assert model.mod2.block1.convs.bn1.num_batches_tracked.item() == 1


def test_eval_sees_parameter_changes_made_after_a_forward():
    model = randomize_norms(iabn_zoo.create_model("resnext50", num_classes=10)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x.clone())
    new_state = randomize_norms(copy.deepcopy(model), seed=7).state_dict()
    model.load_state_dict(new_state)  # in eval mode, in place: the folded copies must follow
    out, _, _ = assert_matches_reference(model, reference_copy(model), x)
    assert_differs(out, before, 1e-2, "outputs before and after the new parameters")


def test_replaced_layers_in_eval_mode_are_not_folded_twice():
    model = randomize_norms(iabn_zoo.create_model("resnext50", num_classes=10)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(x.clone())
        convert_norm(model, "standard")  # new layers, without re-entering eval()
    assert_matches_reference(model, reference_copy(model), x)


@needs_native
def test_gradients_in_eval_mode_come_from_the_layers():
    model = randomize_norms(stack("inplace", "native")).eval()
    reference = reference_copy(model)
    enable_fast_eval(model)
    x = torch.randn(2, 3, 12, 12)
    grads = []
    for net in (model, reference):
        inp = x.clone().requires_grad_()
        net(inp).square().sum().backward()
        grads.append((inp.grad, net.conv1.weight.grad, net.bn1.weight.grad))
    for ours, theirs, name in zip(*grads, ("input", "conv1.weight", "bn1.weight")):  # the same layers ran
        assert torch.equal(ours, theirs), f"gradient of {name} differs by {(ours - theirs).abs().max():.3g}"
    assert packed_convs(model) == (0, 0)


def test_hooks_see_the_convolution_output_not_a_folded_one():
    model = stack("inplace", "torch").eval()
    reference = reference_copy(model)
    enable_fast_eval(model)
    seen = []
    for net in (model, reference):
        net.conv1.register_forward_hook(lambda module, args, out: seen.append(out.clone()))
    x = torch.randn(1, 3, 12, 12)
    assert_matches_reference(model, reference, x)
    # the hooked convolution runs unfolded in both (on channels-last input in the fast path, NCHW in the reference)
    seen64 = []
    twin64 = copy.deepcopy(reference).double()
    twin64.conv1.register_forward_hook(lambda module, args, out: seen64.append(out.clone()))
    with torch.no_grad():
        twin64(x.double())
    assert_as_close_as_standard(seen[0], seen[1], seen64[0], "float32 conv1 output seen by the hook")


def test_disable_lasts_over_train_and_eval():
    model = iabn_zoo.create_model("resnet18", num_classes=3)
    disable_fast_eval(model)
    model.train().eval()
    assert not is_fast_eval_enabled(model)
    assert not any("forward" in m.__dict__ for m in model.modules())
    enable_fast_eval(model, channels_last=False)
    model.train().eval()
    assert is_fast_eval_enabled(model) and fast_eval_state(model).channels_last is False
    assert "forward" in model.mod2.block1.convs.conv1.__dict__


def test_copies_and_pickles_of_an_eval_model_compute_the_same():
    model = randomize_norms(iabn_zoo.create_model("resnet18", num_classes=3, backend="torch")).eval()
    x = torch.randn(1, 3, 32, 32)
    _, expected, expected64 = assert_matches_reference(model, reference_copy(model), x)
    with torch.no_grad():
        with pytest.raises(InvalidArgumentError):
            model(torch.randn(1, 3, 32, 32)[:, :2])  # fails between the input and output hooks
        for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            assert_within_layers_noise(other(x.clone()), expected, expected64)
            folded = [owner for owner in fast_path_cache_owners(other) if isinstance(owner, FoldedPair)]
            assert folded, "a copy of an eval model runs its layers' own forwards: the folded pairs were lost"
            other.train()
            assert not any("forward" in m.__dict__ for m in other.modules())


def test_wrong_input_in_eval_raises_the_layers_typed_error():
    layer = make_norm_act("inplace", backend="torch")(4)
    enable_fast_eval(layer.eval())
    with torch.no_grad(), pytest.raises(InvalidArgumentError, match="channels"):
        layer(torch.randn(1, 3, 2, 2))


def test_enable_rejects_what_is_not_a_module():
    with pytest.raises(InvalidArgumentError, match="nn.Module"):
        enable_fast_eval("resnet50")


class FusedResidualBlock(nn.Module):
    """conv -> norm-act that adds the shortcut, called by hand as the ResNet blocks do."""

    def __init__(self, norm_act):
        super().__init__()
        self.convs = nn.Sequential(OrderedDict([("conv", nn.Conv2d(4, 4, 3, padding=1, bias=False)),
                                                ("bn", norm_act(4))]))

    def forward(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        conv, bn = self.convs
        return bn(conv(x), shortcut)


@pytest.mark.parametrize("backend", BACKENDS)
def test_folded_norm_with_residual_matches_and_checks_the_residual(backend):
    block = randomize_norms(FusedResidualBlock(make_norm_act("inplace", backend=backend))).eval()
    reference = reference_copy(block)
    enable_fast_eval(block)
    x, shortcut = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    assert_matches_reference(block, reference, x, shortcut)
    with torch.no_grad():
        with pytest.raises(InvalidArgumentError, match="residual"):
            block(x.clone(), torch.randn(2, 4, 3, 3))


def test_strided_input_to_a_lone_inplace_layer():
    layer = randomize_norms(make_norm_act("inplace", backend="torch")(4)).eval()
    reference = reference_copy(layer)
    enable_fast_eval(layer)
    x = torch.randn(2, 4, 6, 6)
    assert_matches_reference(layer, reference, x[:, :, ::2])
    expanded = torch.randn(1, 4, 1, 1).expand(2, 4, 3, 3)  # elements share memory: must not be written over
    before = expanded.clone()
    with torch.no_grad():
        out, expected = layer(expanded), reference(expanded.contiguous())
    assert torch.equal(expanded, before), "the expanded input was written over"
    expected64 = float64_run(reference, expanded.contiguous())
    assert_within_layers_noise(out, [expected], expected64)
