"""A network is freed by reference counting the moment its last reference goes, in every mode the library puts it
in: no reference cycle (fast-eval overrides, hooks, checkpointing, copies) may keep it, or its tensors live until
Python's cyclic collector happens to run."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn as nn
from support.references import assert_released
from support.numerics import train_step as compiled_train_step
from support.small_models import FAMILIES, images, inductor_as_shared, small_model

import iabn_zoo
from iabn_zoo.layers import convert_norm
from iabn_zoo.models._deployable import deployable_copy


def build(family: str, **options) -> nn.Module:
    """`family` at its smallest, in float32, in training mode."""
    return small_model(family, dtype=torch.float32, **options)


def eval_forward(model: nn.Module) -> nn.Module:
    """One inference forward on the fast eval path (which builds its caches and overrides)."""
    model.eval()
    with torch.no_grad():
        model(images(dtype=torch.float32))
    return model


def loss(outputs: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """A scalar from a network's output (or its list of stage maps), for backward."""
    return sum(out.square().mean() for out in (outputs if isinstance(outputs, list) else [outputs]))


def train_step(model: nn.Module) -> nn.Module:
    """One training step: forward, backward, optimizer step."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss(model(images(dtype=torch.float32))).backward()
    optimizer.step()
    return model


def grad_in_eval(model: nn.Module) -> nn.Module:
    """Eval mode with gradients (frozen norm statistics): the layers' own forwards, autograd recording."""
    model.eval()
    loss(model(images(dtype=torch.float32))).backward()
    return model


def round_trips(model: nn.Module) -> nn.Module:
    """eval -> train -> eval, running each: the fast path installed, removed and installed again."""
    return eval_forward(train_step(eval_forward(model)))


def checkpointed(model: nn.Module) -> nn.Module:
    """Gradient checkpointing on, a training step, then inference."""
    model.set_grad_checkpointing()
    return eval_forward(train_step(model))


def copied(model: nn.Module) -> list[nn.Module]:
    """A deepcopy of a network on the fast path (caches built), run: both must go."""
    twin = copy.deepcopy(eval_forward(model))
    return [model, eval_forward(twin)]


def pickled(model: nn.Module) -> list[nn.Module]:
    """A pickled and unpickled network on the fast path, run: both must go."""
    twin = pickle.loads(pickle.dumps(eval_forward(model)))
    return [model, eval_forward(twin)]


def converted(model: nn.Module) -> nn.Module:
    """Norm layers replaced in eval mode (the fast path's pairs lose their norm), run again."""
    return eval_forward(convert_norm(eval_forward(model), "standard"))


def deployable(model: nn.Module) -> list[nn.Module]:
    """The folded deployable copy, run: both must go."""
    return [model, eval_forward(deployable_copy(eval_forward(model)))]


MODES = {
    "train": train_step,
    "eval": eval_forward,
    "grad_in_eval": grad_in_eval,
    "round_trips": round_trips,
    "grad_checkpointing": checkpointed,
    "deepcopy": copied,
    "pickle": pickled,
    "convert_norm": converted,
    "deployable_copy": deployable,
}


def as_list(used) -> list:
    """What a mode returned, as the list of objects that must be freed."""
    return used if isinstance(used, list) else [used]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family", FAMILIES)
def test_small_network_is_freed_in_every_mode(family, mode):
    assert_released(lambda: as_list(MODES[mode](build(family))), f"{family} after {mode}")


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "vistas"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_features_only_network_is_freed(family, mode):
    assert_released(lambda: [MODES[mode](build(family, features_only=True))], f"{family} features_only {mode}")


def test_created_network_is_freed_after_eval_and_training():
    def use() -> list[nn.Module]:
        model = iabn_zoo.create_model("resnet18", num_classes=3).eval()
        with torch.no_grad():
            model(torch.randn(1, 3, 32, 32))
        return [train_step(model)]

    assert_released(use, "resnet18 from create_model")


def test_the_fast_eval_objects_go_with_the_network():
    """The per-module forwards and their caches (folded, packed weights) are freed with the network."""
    def use() -> list:
        model = eval_forward(build("resnet"))
        owners = {id(fn.__self__): fn.__self__ for m in model.modules() for fn in [m.__dict__.get("forward")]
                  if fn is not None}
        return [model, *owners.values(), *(owner.cache[1] for owner in owners.values() if owner.cache)]

    assert_released(use, "fast eval forwards and caches")


def test_a_compiled_network_is_freed():
    """torch 2.13's compile caches do not hold the network (torch._dynamo.reset() would drop them otherwise). The
    small resnet is compiled, trained a step and run in eval exactly as tests/models/test_compile.py does, so that
    inductor's kernels for these graphs are built once per machine and read from its cache here."""
    def use() -> list[nn.Module]:
        model = small_model("resnet", "inplace")
        compiled = torch.compile(model, backend="inductor", fullgraph=True)
        with inductor_as_shared():
            compiled_train_step(compiled, images())
            model.eval()
            with torch.no_grad():
                compiled(images())
        return [model, compiled]

    assert_released(use, "a compiled network", warm_up=True)
