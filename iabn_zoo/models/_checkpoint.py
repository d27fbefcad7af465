"""Gradient checkpointing for the zoo networks: a block's activations are recomputed in backward instead of kept.

Two traps, both handled here. The recomputation runs the block's norm layers in training mode a second time: its
context puts every buffer of the block back as it was, so a training step updates the running statistics exactly
once. And InPlace-ABN writes over its input: a block that starts with an in-place layer (pre-activation blocks,
DenseNet transitions) would leave its recomputation a corrupted input, so it runs on a (transient) copy inside the
segment and the input the segment keeps stays intact.

Under torch.compile the recompute context cannot be traced, nor is it needed: AOT autograd recomputes values in
the backward graph, while the buffer updates stay in the forward graph, once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.utils.checkpoint as checkpoint

from ..layers import ABN, InPlaceABN, LeanMaxPool2d


@contextlib.contextmanager
def running_stats_kept(module: nn.Module) -> Iterator[None]:
    """Run code and put every buffer of `module` back as it was: a recomputation must not count a batch twice.
    Only changed buffers are written: a write bumps the version of a buffer that autograd may hold (standard BN
    saves its running statistics) and would fail its backward."""
    buffers = list(module.buffers())
    saved = [buffer.clone() for buffer in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved):
                if not torch.equal(buffer, value):
                    buffer.copy_(value)


def recompute_contexts(module: nn.Module) -> tuple[contextlib.AbstractContextManager,
                                                   contextlib.AbstractContextManager]:
    """`torch.utils.checkpoint` contexts: the forward runs as is, the recomputation keeps `module`'s buffers."""
    return contextlib.nullcontext(), running_stats_kept(module)


def recomputed(fn: Callable[..., torch.Tensor], module: nn.Module, *inputs: torch.Tensor,
               preserve_rng_state: bool = True) -> torch.Tensor:
    """fn(*inputs) with its activations recomputed in backward; `module` holds every buffer `fn` updates."""
    if torch.compiler.is_compiling():
        return checkpoint.checkpoint(fn, *inputs, use_reentrant=False, preserve_rng_state=preserve_rng_state)
    return checkpoint.checkpoint(fn, *inputs, use_reentrant=False, preserve_rng_state=preserve_rng_state,
                                 context_fn=partial(recompute_contexts, module))


def on_copy(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """fn applied to a copy of x, for a block that writes over its input."""
    return fn(x.clone())


@dataclass(frozen=True)
class Block:
    """One step of a network's forward: `fn` (default `module` itself) on the previous step's output.

    `overwrites_input`: the step writes over its input (then checkpointing runs it on a copy); `checkpointed`:
    whether grad checkpointing recomputes it (not worth it for a lone norm layer or pooling).
    """

    module: nn.Module
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    overwrites_input: bool | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (self.module if self.fn is None else self.fn)(x)

    @property
    def checkpointed(self) -> bool:
        return self.fn is not None or not isinstance(self.module, (ABN, LeanMaxPool2d, nn.MaxPool2d))

    @property
    def writes_input(self) -> bool:
        if self.overwrites_input is not None:
            return self.overwrites_input
        return isinstance(self.module, InPlaceABN) or bool(getattr(self.module, "overwrites_input", False))


def run_block(block: Block, x: torch.Tensor, grad_checkpointing: bool) -> torch.Tensor:
    """The block's output; recomputed in backward when grad checkpointing is on and autograd records the call."""
    if not (grad_checkpointing and block.checkpointed and torch.is_grad_enabled()):
        return block(x)
    fn = partial(on_copy, block) if block.writes_input else block
    return recomputed(fn, block.module, x)


def run_blocks(blocks: list[Block], x: torch.Tensor, grad_checkpointing: bool) -> torch.Tensor:
    """The blocks applied in turn."""
    for block in blocks:
        x = run_block(block, x, grad_checkpointing)
    return x


def sequence(module: nn.Sequential | nn.Module) -> list[Block]:
    """One Block per child of a Sequential (the residual blocks of a module)."""
    return [Block(child) for child in module.children()]
