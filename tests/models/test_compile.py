"""torch.compile(fullgraph=True) on every family: no graph break, no recompilation on the next step at the same
shapes, and the eager result (judged in float64), in training (outputs, gradients, running statistics) and eval.

Inductor compiles one training step and one eval per family (the Wide ResNets through the Vistas network, whose
body is the dilated A2 variant and whose blocks the plain one shares; a cold inductor cache costs ~1 min per
network on 2 cores); the cheaper `aot_eager`
(the same dynamo capture and AOT autograd, without code generation) covers every family in bn_mode inplace and sync
(one process), each on one backend, so that both modes and both backends meet every family.
tests/models/test_release.py compiles the small resnet exactly as here (`inductor_as_shared`), so its kernels come
from inductor's cache instead of a second C++ build.
"""

import copy

import pytest
import torch
import torch._dynamo
from support.backends import needs_native
from support.numerics import assert_same_buffers, assert_same_function, train_step
from support.small_models import FAMILIES, images, inductor_as_shared, small_model


def assert_same_step(compiled, reference, x, what):
    """One training step of the compiled model and of the eager one give the same output and gradients (dropout
    drawing the same masks from the same seed)."""
    torch.manual_seed(1)
    out, dx, grads = train_step(compiled, x)
    torch.manual_seed(1)
    ref_out, ref_dx, ref_grads = train_step(reference, x)
    assert_same_function(out, ref_out, f"{what}: output")
    assert_same_function(dx, ref_dx, f"{what}: input gradient")
    for name, grad in ref_grads.items():
        assert_same_function(grads[f"_orig_mod.{name}"], grad, f"{what}: gradient of {name}")


def check_compiled(family, bn_mode, backend, compiler, *, train=True, evaluate=True):
    """Compile the family's small model with `compiler`; two training steps (the second must not recompile) and
    two eval calls (likewise), each against the eager model."""
    model = small_model(family, bn_mode, backend)
    reference = copy.deepcopy(model)
    compiled = torch.compile(model, backend=compiler, fullgraph=True)
    x = images()
    what = f"{family} {bn_mode} {backend} {compiler}"
    torch._dynamo.reset()
    if train:
        assert_same_step(compiled, reference, x, f"{what} step 1")
        with torch._dynamo.config.patch(error_on_recompile=True):
            assert_same_step(compiled, reference, x, f"{what} step 2")
        assert_same_buffers(model, reference, what)
    if evaluate:
        compiled.eval()
        reference.eval()
        with torch.no_grad():
            for call in (1, 2):
                with torch._dynamo.config.patch(error_on_recompile=call == 2):
                    assert_same_function(compiled(x), reference(x), f"{what} eval call {call}")


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in ("wider_resnet", "wider_resnet_a2")])
def test_inductor_compiles_training_and_eval_like_eager(family):
    with inductor_as_shared():
        check_compiled(family, "inplace", None, "inductor")


@pytest.mark.parametrize("bn_mode,backend", [pytest.param("inplace", "native", marks=needs_native), ("sync", "torch")])
@pytest.mark.parametrize("family", FAMILIES)
def test_captured_whole_in_both_modes_and_backends(family, bn_mode, backend):
    check_compiled(family, bn_mode, backend, "aot_eager", evaluate=bn_mode == "inplace")
