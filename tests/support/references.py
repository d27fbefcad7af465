"""Whether objects are freed by reference counting alone: `assert_released` runs a use of them with Python's cyclic
collector off and checks that weak references to what it returned are dead once it returns; a failure names the
reference cycle that holds each survivor."""

from __future__ import annotations

import functools
import gc
import itertools
import types
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn

from iabn_zoo.layers import make_norm_act
from iabn_zoo.models._fast_eval import enable_fast_eval


def describe(obj: Any) -> str:
    """A short name for one link of a reference chain."""
    if isinstance(obj, dict):
        return f"dict{sorted(map(str, obj))[:5]}"
    if isinstance(obj, types.MethodType):
        return f"bound method {obj.__func__.__qualname__}"
    if isinstance(obj, types.FunctionType):
        return f"function {obj.__qualname__}"
    if isinstance(obj, types.CellType):
        return "closure cell"
    return type(obj).__qualname__


def reference_cycle(obj: Any, limit: int = 200_000) -> str:
    """The shortest chain of references from `obj` back to itself, or a note that none was found (something
    outside holds it)."""
    parents: dict[int, tuple[Any, Any]] = {}
    queue: deque = deque()
    for child in gc.get_referents(obj):
        parents.setdefault(id(child), (None, child))
        queue.append(child)
    for _ in range(limit):
        if not queue:
            break
        current = queue.popleft()
        if current is obj:
            chain, node = [], current
            while node is not None:
                parent, link = parents[id(node)]
                chain.append(describe(link))
                node = parent
            return " -> ".join([describe(obj), *reversed(chain)])
        if isinstance(current, (type, types.ModuleType)):
            continue
        for child in gc.get_referents(current):
            if id(child) not in parents:
                parents[id(child)] = (current, child)
                queue.append(child)
    return f"{describe(obj)}: no cycle through it found; held from outside"


@functools.cache
def warm_up_torch() -> None:
    """One training step (with an optimizer) and one fast-path inference of a tiny network: torch keeps a few
    objects of a process's first optimizer step alive for good, which must not be taken for a leak."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), make_norm_act("inplace")(4))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    optimizer.step()
    enable_fast_eval(net.eval())
    with torch.no_grad():
        net(torch.randn(2, 3, 8, 8))


def owns_tensors(obj: Any) -> bool:
    """Whether `obj` is an nn.Module holding parameters or buffers (torch keeps parameterless graph modules of its
    own in caches)."""
    return isinstance(obj, nn.Module) and any(True for _ in itertools.chain(obj.parameters(), obj.buffers()))


def assert_released(use: Callable[[], Iterable[Any]], what: str, *, warm_up: bool = False) -> None:
    """`use()` builds and exercises objects and returns those that must be freed the moment it returns, by
    reference counting alone (after torch's own warm-up, `warm_up_torch`); no module it built inside may survive
    either (if it owns tensors). `warm_up`: run `use` once before, for a use whose first run in a process leaves
    garbage cycles of its own (a third-party import that fails and keeps its traceback, e.g. matplotlib's, holds
    the calling frames).

    Everything alive before `use` is frozen (gc.freeze: moved out of the collector's generations, which
    gc.get_objects reads), so the search for surviving modules reads only what `use` made, not the whole heap, whose
    size grows with every test run before it (that search made this check cost seconds a test in a full run)."""
    warm_up_torch()
    if warm_up:
        use()
    gc.disable()
    gc.freeze()
    try:
        refs = [weakref.ref(obj) for obj in use()]
        survivors = [ref() for ref in refs if ref() is not None]
        survivors += [obj for obj in gc.get_objects() if owns_tensors(obj)
                      and not any(obj is other for other in survivors)]
        cycles = [reference_cycle(obj) for obj in survivors]
        del survivors
    finally:
        gc.unfreeze()
        gc.enable()
    assert not cycles, f"{what}: {len(cycles)} objects outlived their last reference:\n" + "\n".join(cycles[:10])
