"""`set_grad_checkpointing()`: blocks recomputed in backward, yet a training step gives the gradients and running
statistics of the plain one (float64), with in-place layers writing over the recomputed blocks' inputs, and the
activations kept for backward shrink."""

import copy

import pytest
import torch
from support.numerics import assert_same_buffers, assert_same_function, train_step
from support.small_models import FAMILIES, images, small_model

from iabn_zoo.train.memory import SavedTensorLedger


def conv_calls(model, step):
    """How many times each convolution runs during `step()`: a recomputed block's run once more in backward."""
    calls = {}

    def count(module, args):
        calls[id(module)] = calls.get(id(module), 0) + 1

    handles = [m.register_forward_pre_hook(count) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        step()
    finally:
        for handle in handles:
            handle.remove()
    return calls


@pytest.mark.parametrize("family,bn_mode", [(family, "inplace") for family in FAMILIES]
                         + [(family, "standard") for family in ("resnext", "resnet", "densenet")])
def test_checkpointed_step_equals_plain_step(family, bn_mode):
    plain = small_model(family, bn_mode, memory_efficient=True)
    checkpointed = copy.deepcopy(plain)
    checkpointed.set_grad_checkpointing()
    assert checkpointed.grad_checkpointing and not plain.grad_checkpointing
    x = images()
    for step in (1, 2):
        torch.manual_seed(step)  # dropout (WRN-A2) draws the same masks in both
        out, dx, grads = train_step(checkpointed, x)
        torch.manual_seed(step)
        ref_out, ref_dx, ref_grads = train_step(plain, x)
        what = f"{family} {bn_mode} step {step}"
        assert_same_function(out, ref_out, f"{what}: output")
        assert_same_function(dx, ref_dx, f"{what}: input gradient")
        for name, grad in ref_grads.items():
            assert_same_function(grads[name], grad, f"{what}: gradient of {name}")
    assert_same_buffers(checkpointed, plain, f"{family} {bn_mode} after two steps")


@pytest.mark.parametrize("family", ["resnext", "resnet", "densenet"])
def test_blocks_are_recomputed_and_keep_less(family):
    model = small_model(family, "inplace", dtype=torch.float32)
    x = images(batch=4, size=64, dtype=torch.float32)
    ledgers = {}

    def step(checkpointing):
        model.set_grad_checkpointing(checkpointing)
        ledgers[checkpointing] = SavedTensorLedger(list(model.parameters()))
        with ledgers[checkpointing].recording():
            out = model(x)
        out.sum().backward()

    plain_calls = conv_calls(model, lambda: step(False))
    checkpointed_calls = conv_calls(model, lambda: step(True))
    assert all(checkpointed_calls[key] == count + 1 for key, count in plain_calls.items()), (
        f"every convolution runs once more: {sorted(checkpointed_calls.values())} against "
        f"{sorted(plain_calls.values())}")
    kept, plain_kept = ledgers[True].saved_bytes, ledgers[False].saved_bytes
    assert kept < 0.6 * plain_kept, f"checkpointed {family} keeps {kept} bytes for backward, plain {plain_kept}"


def test_no_grad_does_not_checkpoint():
    model = small_model("resnext", "inplace")
    model.set_grad_checkpointing()
    with torch.no_grad():
        calls = conv_calls(model, lambda: model(images()))
    assert set(calls.values()) == {1}


def test_segmentation_network_passes_the_switch_to_its_body():
    model = small_model("vistas", "inplace")
    model.set_grad_checkpointing()
    assert model.grad_checkpointing and model.body.grad_checkpointing


@pytest.mark.parametrize("family", ["resnext", "wider_resnet_a2"])
def test_checkpointed_network_compiles_whole_and_equals_eager(family):
    """Under torch.compile the recomputation is AOT autograd's (the buffer updates stay in the forward graph)."""
    model = small_model(family, "inplace")
    reference = copy.deepcopy(model)
    model.set_grad_checkpointing()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = images()
    for step in (1, 2):
        torch.manual_seed(step)
        out, dx, grads = train_step(compiled, x)
        torch.manual_seed(step)
        ref_out, ref_dx, ref_grads = train_step(reference, x)
        assert_same_function(out, ref_out, f"{family} step {step}: output")
        assert_same_function(dx, ref_dx, f"{family} step {step}: input gradient")
        for name, grad in ref_grads.items():
            assert_same_function(grads[f"_orig_mod.{name}"], grad, f"{family} step {step}: gradient of {name}")
    assert_same_buffers(model, reference, family)
