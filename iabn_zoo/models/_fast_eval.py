"""Fast inference path: in eval mode, norm-act layers run as a per-channel affine + activation in plain PyTorch,
folded into the convolution right before them where a Sequential puts one there, channels-last on CPU.

Eval-mode batch norm is y = act(x * scale + shift), scale = w' / sqrt(running_var + eps), shift = b - mean * scale,
with w' = |w| + eps for InPlace-ABN and w' = w for standard BN. Nothing changes in training mode, nor when autograd
needs the layers (eval with gradients, e.g. frozen-BN fine-tuning): the norm-act layers then run their own forward.

The path is a set of per-instance `forward` overrides: modules, parameters, buffers and state_dict keys stay the
same objects. A convolution followed by a norm-act layer in an `nn.Sequential` is assumed to feed it (the order
the zoo's blocks use); a pair is not folded when either module has hooks or has been replaced. Folded weights are
cached and recomputed when a parameter or buffer changes in place; writes through `.data` are not seen until the
next `train()`/`eval()`, which drop the caches. Under torch.compile and torch.export (`traced`) the path steps aside
for the layers' own eval forwards, which the tracer can see through (it does its own folding).

A module owns its forward override and the root owns the network's FastEval (and its hooks): each names the modules
it works on weakly (`_weakly_held`), so that a network and its caches are freed by reference counting.

On CPU, dense (groups 1) convolutions, folded or not, on channels-last float32 inputs run on a oneDNN weight packed
once per input shape: 1x1 ones about 2x faster than `conv2d`, which reorders the weight at every call, larger kernels
a few percent. Grouped ones measured slower packed, NCHW inputs too. The activation stays a separate in-place step:
fusing it as a oneDNN post-op measured no gain, and would be wrong for norm layers that add a residual first.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules import module as torch_module

from ..errors import InvalidArgumentError
from ..layers import ABN, activate_
from ._eval_kernels import dense, eval_affine, pack_weight, packed_conv, spatial_format, tensors_key
from ._weakly_held import WeakAttribute, WeaklyHeld

SUPPORTED_ACTIVATIONS = ("leaky_relu", "elu", "relu", "identity")
STATE_ATTR = "_iabn_fast_eval"
PACKING_AVAILABLE = hasattr(torch.ops.mkldnn, "_convolution_pointwise") and torch.backends.mkldnn.is_available()


def traced() -> bool:
    """Whether torch.compile or torch.export is tracing this call: the overrides then run the modules' own forwards
    (the prepacked oneDNN weights and the caches keyed by data pointers cannot be traced)."""
    return torch.compiler.is_compiling()


def has_hooks(module: nn.Module) -> bool:
    """Whether forward or backward hooks (other than the fast path's own) would observe this module's input or
    output."""
    own = (module._forward_hooks, module._forward_pre_hooks)
    return bool(any(not isinstance(getattr(hook, "__self__", None), FastEval) for hooks in own
                    for hook in hooks.values())
                or module._backward_hooks or module._backward_pre_hooks or torch_module._global_forward_hooks
                or torch_module._global_forward_pre_hooks or torch_module._global_backward_hooks)


def needs_autograd(x: torch.Tensor, *modules: nn.Module) -> bool:
    """Whether autograd would record this call: then the memory-saving layers must run, not the fast path."""
    if not torch.is_grad_enabled():
        return False
    return x.requires_grad or any(p.requires_grad for m in modules for p in m.parameters(recurse=False))


def can_run_fast(layer: ABN) -> bool:
    """Whether a norm-act layer's eval function is a fixed affine + activation this module knows."""
    return not layer.training and layer.activation in SUPPORTED_ACTIVATIONS


def packable(conv: nn.Conv2d) -> bool:
    """Whether a convolution is one that runs faster on a packed weight: dense (groups 1), zero padding given as
    numbers."""
    return (PACKING_AVAILABLE and conv.groups == 1 and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str))


def can_pack(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether this call of a packable convolution may run packed: a channels-last float32 CPU input and weight."""
    return (packable(conv) and x.device.type == "cpu" and x.dtype == conv.weight.dtype == torch.float32
            and x.dim() == 4 and spatial_format(x) is torch.channels_last)


class CachedForward(WeaklyHeld):
    """Base of the per-module forwards: copies and pickles leave the cache out (packed oneDNN weights can be neither
    copied nor pickled); it is rebuilt at the next call."""

    def __getstate__(self) -> dict[str, Any]:
        """Picklable state: everything but the cache."""
        return {**super().__getstate__(), "cache": None}


class FastNorm(CachedForward):
    """Eval-time forward of one norm-act layer: act(x * scale + shift (+ residual)), or act(x (+ residual)) when
    the convolution before it already applied the affine."""

    layer = WeakAttribute()
    pair = WeakAttribute()  # the pair owns this forward; the pair's convolution owns the pair

    def __init__(self, layer: ABN, pair: FoldedPair | None = None):
        self.layer = layer
        self.pair = pair
        self.cache: tuple[tuple, torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The layer's eval output; the layer's own forward whenever the fast path does not apply."""
        layer, pair = self.layer, self.pair
        if pair is not None and pair.folding(x):
            layer.check_input(x, residual)
            out = x if residual is None else x.add_(residual)
            return activate_(out, layer.activation, layer.activation_param)
        if traced() or not can_run_fast(layer) or has_hooks(layer) or needs_autograd(x, layer):
            return type(layer).forward(layer, x, residual)
        layer.check_input(x, residual)
        scale, shift = self.affine()
        shape = (1, -1) + (1,) * (x.dim() - 2)
        # The in-place modes write over x, as their own forward does; standard BN and odd strides get a new tensor.
        out = x if layer.bn_mode != "standard" and dense(x) else torch.empty_like(x)
        torch.addcmul(shift.view(shape), x, scale.view(shape), out=out)
        if residual is not None:
            out.add_(residual)
        return activate_(out, layer.activation, layer.activation_param)

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift), cached until a parameter or running statistic changes."""
        layer = self.layer
        key = (layer.bn_mode, layer.eps) + tensors_key(layer.weight, layer.bias, layer.running_mean,
                                                       layer.running_var)
        if self.cache is None or self.cache[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                self.cache = (key, *(t.to(layer.weight.dtype) for t in eval_affine(layer)))
        return self.cache[1], self.cache[2]


class FoldedPair(CachedForward):
    """A convolution and the norm-act layer after it in a Sequential, run in eval as one convolution whose weight
    and bias carry the affine, followed by the activation."""

    parent = WeakAttribute()
    conv = WeakAttribute()
    norm = WeakAttribute()

    def __init__(self, parent: nn.Sequential, conv_name: str, norm_name: str):
        self.parent = parent
        self.conv_name = conv_name
        self.norm_name = norm_name
        self.conv = parent._modules[conv_name]
        self.norm = parent._modules[norm_name]
        self.norm_fast = FastNorm(self.norm, self)
        self.cache: tuple[tuple, torch.Tensor, torch.Tensor] | None = None

    @property
    def conv_forward(self) -> Any:
        """The convolution's override (a bound method made on demand: stored on the pair it would be a cycle)."""
        return self.run_conv

    @property
    def norm_forward(self) -> Any:
        """The norm layer's override."""
        return self.norm_fast.forward

    def intact(self) -> bool:
        """Both modules are still in place, next to each other, with this pair's forwards. Bound methods compare
        with ==: a deepcopy may copy one method twice (once per reference), both bound to the same copied pair."""
        parent, conv, norm = self.parent, self.conv, self.norm
        if parent is None or conv is None or norm is None:
            return False
        modules = parent._modules
        return (modules.get(self.conv_name) is conv and modules.get(self.norm_name) is norm
                and conv.__dict__.get("forward") == self.conv_forward
                and norm.__dict__.get("forward") == self.norm_forward)

    def folding(self, x: torch.Tensor) -> bool:
        """Whether this call runs folded; the convolution (on its input) and the norm (on the convolution's
        output) reach the same answer, so exactly one of them applies the affine."""
        conv, norm = self.conv, self.norm
        return (not traced() and self.intact() and can_run_fast(norm) and conv.out_channels == norm.num_features
                and not has_hooks(conv) and not has_hooks(norm) and not needs_autograd(x, conv, norm))

    def run_conv(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution's forward: folded weights in eval, its own forward otherwise."""
        if not self.folding(x):
            if self.norm is None or self.norm.training:
                self.cache = None  # training changes the weights (or the norm is gone): free the folded copy
            return type(self.conv).forward(self.conv, x)
        shape = x.shape if can_pack(self.conv, x) else None
        weight, bias = self.folded(spatial_format(x), shape)
        if shape is not None:
            return packed_conv(self.conv, x, weight, bias)
        return self.conv._conv_forward(x, weight, bias)

    def folded(self, memory_format: torch.memory_format,
               packed_for: torch.Size | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Convolution weight scaled per output channel (packed for inputs of shape `packed_for` unless None) and
        the bias carrying the shift, cached."""
        conv, norm = self.conv, self.norm
        key = (norm.bn_mode, norm.eps, memory_format, packed_for) + tensors_key(
            conv.weight, conv.bias, norm.weight, norm.bias, norm.running_mean, norm.running_var)
        if self.cache is None or self.cache[0] != key:
            self.cache = None  # free the stale copy before building the new one
            with torch.inference_mode(False), torch.no_grad():
                scale, shift = eval_affine(norm)  # folded in float32 at least, then cast once
                weight = (conv.weight * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype)
                weight = weight.contiguous(memory_format=memory_format)
                bias = (shift if conv.bias is None else conv.bias * scale + shift).to(conv.weight.dtype)
                if packed_for is not None:
                    weight = pack_weight(conv, weight, packed_for)
                self.cache = (key, weight, bias)
        return self.cache[1], self.cache[2]


class PackedConv(CachedForward):
    """Eval-time forward of a packable convolution that is not folded: its own weight, packed for the input shape
    while no autograd, hooks or unsuited input are involved; its own forward otherwise."""

    conv = WeakAttribute()

    def __init__(self, conv: nn.Conv2d):
        self.conv = conv
        self.cache: tuple[tuple, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution of `x`, on the packed weight when this call allows it."""
        conv = self.conv
        if traced() or not can_pack(conv, x) or has_hooks(conv) or needs_autograd(x, conv):
            if conv.training:
                self.cache = None  # training changes the weight: free the packed copy
            return type(conv).forward(conv, x)
        key = (x.shape,) + tensors_key(conv.weight)
        if self.cache is None or self.cache[0] != key:
            self.cache = None
            with torch.inference_mode(False), torch.no_grad():
                self.cache = (key, pack_weight(conv, conv.weight, x.shape))
        return packed_conv(conv, x, self.cache[1], conv.bias)


def folded_pairs(module: nn.Module) -> Iterator[FoldedPair]:
    """Every (Conv2d, norm-act) pair that sits side by side in an nn.Sequential of `module`, each module once."""
    counts: dict[int, int] = {}
    for _, child in module.named_modules(remove_duplicate=False):
        counts[id(child)] = counts.get(id(child), 0) + 1
    for sequential in module.modules():
        if not isinstance(sequential, nn.Sequential):
            continue
        names = list(sequential._modules)
        for conv_name, norm_name in zip(names, names[1:]):
            conv, norm = sequential._modules[conv_name], sequential._modules[norm_name]
            if (type(conv) is nn.Conv2d and isinstance(norm, ABN) and counts[id(conv)] == 1
                    and counts[id(norm)] == 1):
                yield FoldedPair(sequential, conv_name, norm_name)


class FastEval(WeaklyHeld):
    """The fast path of one network: whether it is wanted, and while installed, the forwards it overrode and the
    channels-last hooks on its root. Modules another FastEval already overrode (a nested network) stay its own.
    The root owns it (and its hooks): it names the root and the overridden modules weakly."""

    root = WeakAttribute()

    def __init__(self, root: nn.Module, *, enabled: bool = True, channels_last: bool | None = None):
        self.root = root
        self.enabled = enabled
        self.channels_last = channels_last
        self.installed: list[tuple[weakref.ref, Any]] = []
        self.handles: list[Any] = []
        self.converted: weakref.ref | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Picklable state: the overridden modules named strongly, no reference to a call's converted input (it is
        transient, and weak)."""
        state = {key: value for key, value in super().__getstate__().items() if key != "installed"}
        return {**state, "overridden": self.overridden, "converted": None}

    @property
    def overridden(self) -> list[tuple[nn.Module, Any]]:
        """(module, forward) for every override this FastEval installed and whose module is still alive."""
        return [(module, forward) for module, forward in ((ref(), forward) for ref, forward in self.installed)
                if module is not None]

    @overridden.setter
    def overridden(self, pairs: list[tuple[nn.Module, Any]]) -> None:
        self.installed = [(weakref.ref(module), forward) for module, forward in pairs]

    def install(self) -> None:
        """(Re)install on the root's current modules: overrides for pairs, lone norm layers and lone packable
        convolutions, hooks on the root."""
        self.uninstall()
        paired: set[int] = set()
        for pair in folded_pairs(self.root):
            if self.override(pair.conv, pair.conv_forward) and self.override(pair.norm, pair.norm_forward):
                paired.update((id(pair.conv), id(pair.norm)))
        for layer in self.root.modules():
            if id(layer) in paired:
                continue
            if isinstance(layer, ABN):
                self.override(layer, FastNorm(layer).forward)
            elif type(layer) is nn.Conv2d and packable(layer):
                self.override(layer, PackedConv(layer).forward)
        self.handles = [self.root.register_forward_pre_hook(self.input_hook),
                        self.root.register_forward_hook(self.output_hook)]

    def override(self, module: nn.Module, forward: Any) -> bool:
        """Give `module` an instance-level forward (its class forward stays what training runs), unless another
        FastEval owns it."""
        if "forward" in module.__dict__:
            return any(owned is module for owned, _ in self.overridden)
        module.forward = forward
        self.installed.append((weakref.ref(module), forward))
        return True

    def uninstall(self) -> None:
        """Give every overridden module its class forward back; drop the hooks and the cached weights."""
        for module, forward in self.overridden:
            if module.__dict__.get("forward") == forward:
                del module.__dict__["forward"]
        for handle in self.handles:
            handle.remove()
        self.installed.clear()
        self.handles.clear()

    def wants_channels_last(self, root: nn.Module, x: Any) -> bool:
        """Channels-last for this call: eval, no autograd, a contiguous 4-D input, on CPU unless set explicitly."""
        if (root.training or torch.is_grad_enabled() or not isinstance(x, torch.Tensor) or x.dim() != 4
                or not x.is_contiguous()):
            return False
        return self.channels_last if self.channels_last is not None else x.device.type == "cpu"

    def input_hook(self, root: nn.Module, args: tuple) -> tuple | None:
        """Forward pre-hook: hand the network a channels-last copy of its input when that is faster."""
        if traced():
            return None
        self.converted = None
        if not args or not self.wants_channels_last(root, args[0]):
            return None
        converted = args[0].contiguous(memory_format=torch.channels_last)
        self.converted = weakref.ref(converted)
        return (converted, *args[1:])

    def output_hook(self, root: nn.Module, args: tuple, output: Any) -> Any:
        """Forward hook: outputs in the usual contiguous layout when the input hook changed the layout."""
        if traced() or self.converted is None or not args or self.converted() is not args[0]:
            return None
        self.converted = None
        if isinstance(output, torch.Tensor):
            return output.contiguous()
        if isinstance(output, (list, tuple)):
            return type(output)(t.contiguous() if isinstance(t, torch.Tensor) else t for t in output)
        return None


def fast_eval_state(module: nn.Module) -> FastEval | None:
    """The FastEval of `module`, if it has one."""
    if not isinstance(module, nn.Module):
        raise InvalidArgumentError(f"the fast eval path works on a torch nn.Module, got {type(module).__name__}")
    return module.__dict__.get(STATE_ATTR)


def enable_fast_eval(module: nn.Module, *, channels_last: bool | None = None) -> None:
    """Install the fast path on `module` (again, after its layers changed): whenever a norm-act layer is in eval
    mode and no gradient is needed, it runs as a plain affine + activation, folded into the preceding convolution
    where possible. `channels_last=None` means channels-last on CPU only."""
    state = fast_eval_state(module)
    if state is None:
        state = module.__dict__[STATE_ATTR] = FastEval(module, channels_last=channels_last)
    state.enabled = True
    if channels_last is not None:
        state.channels_last = channels_last
    state.install()


def disable_fast_eval(module: nn.Module) -> None:
    """Turn the fast path off for good (until `enable_fast_eval`): every layer runs its own forward in eval too."""
    state = fast_eval_state(module)
    if state is None:
        state = module.__dict__[STATE_ATTR] = FastEval(module)
    state.enabled = False
    state.uninstall()


def is_fast_eval_enabled(module: nn.Module) -> bool:
    """Whether `module` has the fast path turned on (it acts in eval mode only)."""
    state = fast_eval_state(module)
    return state is not None and state.enabled


def sync_fast_eval(module: nn.Module) -> None:
    """What `train(mode)` calls: install the fast path on entering eval mode unless it was disabled, remove it in
    training, so training always runs the plain memory-saving layers with no cached weights around."""
    state = fast_eval_state(module)
    if state is None:
        state = module.__dict__[STATE_ATTR] = FastEval(module)
    if state.enabled and not module.training:
        state.install()
    else:
        state.uninstall()
