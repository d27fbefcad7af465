"""DenseNet: the authors' layout at full size, small forward/backward in every mode and backend, features_only,
dilation, bad input, and the memory-efficient dense layers (same outputs, gradients and running statistics as the
plain formulation; only inputs, layer outputs and hidden maps kept for backward)."""

import copy
from collections import Counter

import pytest
import torch
from support.backends import BACKENDS
from support.numerics import assert_same_function, float64_tol

from iabn_zoo.errors import InvalidArgumentError
from iabn_zoo.factory import create_model
from iabn_zoo.layers import convert_norm, make_norm_act
from iabn_zoo.models._checkpoint import running_stats_kept
from iabn_zoo.models.densenet import DenseModule

SMALL = {"growth": 4, "num_classes": 7}  # full depth, a fraction of the width


def saved_maps(model: torch.nn.Module, x: torch.Tensor) -> tuple[dict[int, tuple], torch.Tensor]:
    """What one forward keeps for backward: {storage pointer: (bytes, shape)} of non-parameter tensors."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(tensor):
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in params:
            kept[pointer] = (tensor.untyped_storage().nbytes(), tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = model(x)
    return kept, out


def saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    return sum(size for size, _ in saved_maps(model, x)[0].values())


def norm_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: buffer.clone() for name, buffer in model.named_buffers()}


@pytest.mark.parametrize("arch,blocks,features", [
    ("densenet121", (6, 12, 24, 16), 1024),
    ("densenet169", (6, 12, 32, 32), 1664),
    ("densenet201", (6, 12, 48, 32), 1920),
    ("densenet264", (6, 12, 64, 48), 2688),
])
def test_full_size_construction_has_the_authors_layout(arch, blocks, features):
    model = create_model(arch)
    assert [len(getattr(model, f"mod{i}").convs1) for i in range(2, 6)] == list(blocks)
    assert model.num_features == features == model.feature_info[-1].channels
    keys = list(model.state_dict())
    assert keys[0] == "mod1.conv1.weight" and keys[-2:] == ["classifier.fc.weight", "classifier.fc.bias"]
    assert model.state_dict()["mod1.conv1.weight"].shape == (64, 3, 7, 7)
    assert model.state_dict()["classifier.fc.weight"].shape == (1000, features)
    # transitions halve the channels and sit before the dense module they feed: tra2 -> mod3 -> tra3 ...
    assert keys.index("tra2.bn.weight") > keys.index("mod2.convs3.5.conv.weight")
    assert keys.index("tra2.conv.weight") < keys.index("mod3.convs1.0.bn.weight")
    assert "tra5.bn.weight" not in keys
    tra3 = model.state_dict()["tra3.conv.weight"]
    assert tra3.shape[0] * 2 == tra3.shape[1]
    assert model.mod3.convs1[0].bn.num_features == model.tra2.conv.out_channels == model.mod3.in_channels


def test_input_3x3_stem_has_three_convolutions():
    keys = list(create_model("densenet121", input_3x3=True, growth=8, num_classes=0).state_dict())
    stem = [key for key in keys if key.startswith("mod1.")]
    assert [key for key in stem if key.endswith("conv1.weight") or key.endswith("conv3.weight")] == [
        "mod1.conv1.weight", "mod1.conv3.weight"]
    assert "mod1.bn2.running_var" in stem and "mod1.bn3.weight" not in stem


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bn_mode", ["standard", "inplace"])
def test_small_forward_backward_in_train_and_eval(bn_mode, backend):
    torch.manual_seed(0)
    model = create_model("densenet121", bn_mode=bn_mode, backend=backend, input_3x3=True, **SMALL)
    x = torch.randn(2, 3, 32, 32)
    for training in (True, False):
        model.train(training)
        model.zero_grad()
        before = norm_buffers(model)
        logits = model(x)
        assert logits.shape == (2, 7) and torch.isfinite(logits).all()
        logits.square().sum().backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert model.mod2.convs1[0].conv.weight.grad.abs().sum() > 0
        after = norm_buffers(model)
        changed = [name for name in before if not torch.equal(before[name], after[name])]
        if training:
            assert int(after["mod5.convs3.0.bn.num_batches_tracked"]) == 1
            assert "mod2.convs1.3.bn.running_mean" in changed
        else:
            assert changed == [], "eval mode must not touch the running statistics"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bn_mode", ["standard", "inplace"])
def test_memory_efficient_layers_compute_the_plain_function(bn_mode, backend):
    """Outputs, input and parameter gradients, and running statistics (updated once) agree with the plain net, in
    float64."""
    torch.manual_seed(1)
    plain = create_model("densenet121", bn_mode=bn_mode, backend=backend, memory_efficient=False, **SMALL).double()
    lean = create_model("densenet121", bn_mode=bn_mode, backend=backend, memory_efficient=True, **SMALL).double()
    lean.load_state_dict(plain.state_dict())
    assert lean.mod3.memory_efficient and not plain.mod3.memory_efficient
    tol = float64_tol(plain)
    for training in (True, False):
        x = torch.randn(3, 3, 40, 40).double()
        results = []
        for model in (plain, lean):
            model.train(training)
            model.zero_grad()
            inputs = x.clone().requires_grad_()
            out = model(inputs)
            (out * torch.linspace(-1, 1, 7, dtype=torch.float64)).sum().backward()
            results.append((out, inputs.grad, {n: p.grad for n, p in model.named_parameters()}, norm_buffers(model)))
        (out_p, dx_p, grads_p, buffers_p), (out_l, dx_l, grads_l, buffers_l) = results
        assert_same_function(out_l.detach(), out_p.detach(), "output", tol)
        assert_same_function(dx_l, dx_p, "input gradient", tol)
        for name in grads_p:
            assert_same_function(grads_l[name], grads_p[name], f"gradient of {name}", tol)
        for name in buffers_p:  # the forward runs as in the plain net; the recomputation must not count it again
            assert torch.equal(buffers_l[name], buffers_p[name]), (
                f"{name}: {buffers_l[name].double().sub(buffers_p[name].double()).abs().max():.3g} from the plain net")
    assert int(buffers_l["mod4.convs1.0.bn.num_batches_tracked"]) == 1


def test_memory_efficient_is_the_default_of_the_inplace_modes_only():
    assert create_model("densenet121", bn_mode="inplace", **SMALL).mod2.memory_efficient
    assert create_model("densenet121", bn_mode="sync", **SMALL).mod2.memory_efficient
    assert not create_model("densenet121", bn_mode="standard", **SMALL).mod2.memory_efficient


def test_lean_dense_module_keeps_inputs_layer_outputs_and_hidden_maps_only():
    """Per layer only the growth-channel output and the 4*growth iABN output remain; no concatenation is kept."""
    layers, growth, in_channels = 4, 8, 16
    module = DenseModule(in_channels, growth, layers, make_norm_act("inplace"), memory_efficient=True)
    kept, out = saved_maps(module, torch.randn(2, in_channels, 10, 10))
    maps = Counter(shape[1] for _, shape in kept.values() if len(shape) == 4)
    assert maps == Counter({in_channels: 1, growth: layers - 1, 4 * growth: layers})
    assert out.shape == (2, in_channels + layers * growth, 10, 10)
    plain = DenseModule(in_channels, growth, layers, make_norm_act("inplace"), memory_efficient=False)
    plain_maps = Counter(shape[1] for _, shape in saved_maps(plain, torch.randn(2, in_channels, 10, 10))[0].values()
                         if len(shape) == 4)
    assert plain_maps[in_channels + growth] == 1, "the plain module keeps every concatenation"


def test_saved_bytes_far_below_standard_bn():
    """At small size the stem weighs more than at 224 px, yet the lean net keeps under a third of standard BN's."""
    x = torch.randn(2, 3, 64, 64)
    standard = saved_bytes(create_model("densenet121", bn_mode="standard", growth=8).train(), x)
    plain = saved_bytes(create_model("densenet121", bn_mode="inplace", memory_efficient=False, growth=8).train(), x)
    lean = saved_bytes(create_model("densenet121", bn_mode="inplace", growth=8).train(), x)
    assert plain < 0.6 * standard
    assert lean < 0.6 * plain and lean < 0.33 * standard


def test_running_stats_kept_restores_every_buffer():
    layer = make_norm_act("inplace", backend="torch")(3)
    before = norm_buffers(layer)
    with running_stats_kept(layer):
        layer(torch.randn(4, 3, 5, 5) + 3)
        assert not torch.equal(layer.running_mean, before["running_mean"])
    assert all(torch.equal(buffer, before[name]) for name, buffer in layer.named_buffers())


def test_features_only_gives_normalised_stages_with_channels_and_strides():
    torch.manual_seed(2)
    model = create_model("densenet121", features_only=True, **SMALL).double()  # train mode: batch statistics
    reference = convert_norm(copy.deepcopy(model), "standard")  # out of place: its stages cannot be overwritten
    assert not hasattr(model, "classifier") and model.num_classes == 0
    x = torch.randn(2, 3, 64, 64).double()
    with torch.no_grad():
        stages, expected = model(x), reference(x)
    assert [tuple(s.shape) for s in stages] == [(2, info.channels, 64 // info.stride, 64 // info.stride)
                                               for info in model.feature_info]
    assert [info.stride for info in model.feature_info] == [4, 8, 16, 32]
    for index, (ours, theirs) in enumerate(zip(stages, expected, strict=True)):  # no later in-place layer has
        assert_same_function(ours, theirs, f"stage {index}", float64_tol(model))  # overwritten a returned stage
    with torch.no_grad():
        final = model.forward_features(x)
    assert_same_function(final, stages[-1], "forward_features against the last stage", float64_tol(model))


def test_dilation_keeps_resolution_and_skips_transition_pooling():
    model = create_model("densenet121", dilation=(1, 1, 2, 4), features_only=True, **SMALL)
    assert [info.stride for info in model.feature_info] == [4, 8, 8, 8]
    assert hasattr(model.tra2, "pool") and not hasattr(model.tra3, "pool") and not hasattr(model.tra4, "pool")
    assert model.mod5.convs3[0].conv.dilation == (4, 4) and model.mod4.convs3[0].conv.dilation == (2, 2)
    with torch.no_grad():
        stages = model.eval()(torch.randn(1, 3, 48, 48))
    assert [s.shape[-1] for s in stages] == [12, 6, 6, 6]


def test_reset_and_get_classifier():
    model = create_model("densenet121", **SMALL)
    assert model.get_classifier().out_features == 7
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3 and model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    model.reset_classifier(0)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, model.num_features)


@pytest.mark.parametrize("options,message", [
    ({"growth": 0}, "growth must be a positive integer"),
    ({"theta": 0.0}, r"theta .* must be in \(0, 1\]"),
    ({"theta": 1.5}, r"theta .* must be in \(0, 1\]"),
    ({"dilation": (1, 2)}, "dilation must be an int >= 1 or four"),
    ({"dilation": 0}, "dilation must be an int >= 1 or four"),
    ({"num_classes": -1}, "num_classes must be an integer >= 0"),
    ({"bn_mode": "batch"}, "bn_mode must be one of"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(InvalidArgumentError, match=message):
        create_model("densenet121", **{"growth": 4, **options})


def test_wrong_input_channels_are_refused():
    model = create_model("densenet121", **SMALL)
    with pytest.raises(InvalidArgumentError, match=r"expects input of shape \(N, 3, H, W\)"):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(InvalidArgumentError):
        model(torch.randn(3, 32, 32))
