"""DenseNet 121/169/201/264 on norm-act layers, module for module as the authors built it (`mod1`, `tra2`, ...).

Dense layers can be memory-efficient: the concatenation of a layer's inputs, its norm-act and its 1x1 convolution
are recomputed in backward instead of kept, so a layer keeps only its own outputs. The recomputation restores the
running statistics it touched, so a training step updates them exactly once (`_checkpoint`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn as nn

from ..errors import InvalidArgumentError
from ._base import FeatureInfo, ZooNet
from ._blocks import build_family, input_stem
from ._checkpoint import Block, recomputed
from ._registry import register_arch

NormAct = Callable[..., nn.Module]
BOTTLENECK_FACTOR = 4


def concat_then(block: nn.Module, *features: torch.Tensor) -> torch.Tensor:
    """`block` applied to the channel concatenation of `features` (a fresh tensor, so in-place norms may write it)."""
    return block(torch.cat(features, dim=1))


class DenseModule(nn.Module):
    """Dense block: layer i sees the concatenation of the block input and all earlier layer outputs.

    Each layer is `convs1[i]` (norm-act + 1x1 conv to 4 * growth) then `convs3[i]` (norm-act + 3x3 conv to growth);
    the block returns the concatenation of its input and every layer's output.
    """

    def __init__(self, in_channels: int, growth: int, layers: int, norm_act: NormAct, *, dilation: int = 1,
                 memory_efficient: bool = False):
        super().__init__()
        self.in_channels = in_channels
        self.growth = growth
        self.memory_efficient = memory_efficient
        hidden = growth * BOTTLENECK_FACTOR
        self.convs1 = nn.ModuleList()
        self.convs3 = nn.ModuleList()
        for index in range(layers):
            channels = in_channels + index * growth
            self.convs1.append(nn.Sequential(OrderedDict([
                ("bn", norm_act(channels)),
                ("conv", nn.Conv2d(channels, hidden, 1, bias=False)),
            ])))
            self.convs3.append(nn.Sequential(OrderedDict([
                ("bn", norm_act(hidden)),
                ("conv", nn.Conv2d(hidden, growth, 3, padding=dilation, dilation=dilation, bias=False)),
            ])))

    @property
    def out_channels(self) -> int:
        """Channels of the block output: input plus `growth` per layer."""
        return self.in_channels + self.growth * len(self.convs1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for bottleneck, conv3 in zip(self.convs1, self.convs3):
            features.append(conv3(self.bottleneck(bottleneck, features)))
        return torch.cat(features, dim=1)

    def bottleneck(self, block: nn.Module, features: list[torch.Tensor]) -> torch.Tensor:
        """Concatenation + norm-act + 1x1 conv; when memory-efficient (and autograd is on) recomputed in backward."""
        if not (self.memory_efficient and torch.is_grad_enabled()):
            return concat_then(block, *features)
        # The segment has no randomness, so there is no RNG state to stash and replay.
        return recomputed(partial(concat_then, block), block, *features, preserve_rng_state=False)


class Transition(nn.Sequential):
    """Between dense blocks: norm-act, 1x1 conv compressing channels by theta, 2x2 average pool unless dilated."""

    def __init__(self, in_channels: int, out_channels: int, norm_act: NormAct, *, downsample: bool):
        layers = [("bn", norm_act(in_channels)), ("conv", nn.Conv2d(in_channels, out_channels, 1, bias=False))]
        if downsample:
            layers.append(("pool", nn.AvgPool2d(2, 2)))
        super().__init__(OrderedDict(layers))

    def reduce(self, normalized: torch.Tensor) -> torch.Tensor:
        """The layers after the norm-act: compression and pooling."""
        for name, layer in self.named_children():
            if name != "bn":
                normalized = layer(normalized)
        return normalized


def dense_block_dilations(dilation: int | Sequence[int]) -> tuple[int, ...]:
    """Per dense block dilation from one int or four ints, validated (>= 1)."""
    values = (dilation,) * 4 if isinstance(dilation, int) else tuple(dilation)
    if len(values) != 4 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in values):
        raise InvalidArgumentError(
            f"dilation must be an int >= 1 or four of them (one per dense block), got {dilation!r}"
        )
    return values


class DenseNet(ZooNet):
    """DenseNet-BC with the authors' module names; stage outputs are the normalised dense-block outputs.

    A block whose dilation is > 1 keeps the resolution: its transition skips the pooling and its 3x3 convs dilate.
    """

    stage_downsamples = (False, True, True, True)  # mod2 keeps the stem's stride 4; mod3..mod5 halve it

    def __init__(self, structure: Sequence[int], norm_act: NormAct, *, num_classes: int = 1000,
                 input_3x3: bool = False, growth: int = 32, theta: float = 0.5, dilation: int | Sequence[int] = 1,
                 memory_efficient: bool = False, features_only: bool = False):
        super().__init__()
        if not isinstance(growth, int) or isinstance(growth, bool) or growth <= 0:
            raise InvalidArgumentError(f"growth must be a positive integer, got {growth!r}")
        if not isinstance(theta, (int, float)) or not 0 < theta <= 1:
            raise InvalidArgumentError(f"theta (transition compression) must be in (0, 1], got {theta!r}")
        dilations = dense_block_dilations(dilation)
        self.mod1 = input_stem(norm_act, 2 * growth, input_3x3=input_3x3, memory_efficient=memory_efficient)
        channels, stride = growth * 2, 4
        self.feature_info = []
        for index, (layers, module_dilation) in enumerate(zip(structure, dilations)):
            if index > 0:
                downsample = module_dilation == 1
                compressed = int(channels * theta)
                self.add_module(f"tra{index + 1}", Transition(channels, compressed, norm_act, downsample=downsample))
                channels, stride = compressed, stride * (2 if downsample else 1)
            block = DenseModule(channels, growth, layers, norm_act, dilation=module_dilation,
                                memory_efficient=memory_efficient)
            self.add_module(f"mod{index + 2}", block)
            channels = block.out_channels
            self.feature_info.append(FeatureInfo(f"mod{index + 2}", channels, stride))
        self.bn_out = norm_act(channels)
        self.num_features = channels
        self.features_only = features_only
        self.make_classifier(num_classes)

    def stage_blocks(self) -> list[list[Block]]:
        """Per dense block: the previous transition's compression (mod1, the stem, for the first), the block and
        the norm-act that follows it (the next transition's `bn`, or `bn_out`), whose output is the stage's."""
        stages = []
        for index in range(2, 6):
            previous = getattr(self, f"tra{index - 1}", None)
            transition = getattr(self, f"tra{index}", None)
            first = Block(self.mod1) if previous is None else Block(previous, previous.reduce, overwrites_input=False)
            norm = Block(transition.bn) if transition is not None else Block(self.bn_out)
            stages.append([first, Block(getattr(self, f"mod{index}")), norm])
        return stages


@register_arch
def densenet121(bn_mode: str = "inplace", activation: str = "leaky_relu", activation_param: float = 0.01,
                num_classes: int = 1000, backend: str | None = None, features_only: bool = False,
                memory_efficient: bool | None = None, *, input_3x3: bool = False, growth: int = 32,
                theta: float = 0.5, dilation: int | Sequence[int] = 1, output_stride: int = 32) -> DenseNet:
    """DenseNet-121 (blocks of 6, 12, 24, 16 layers); options: input_3x3, growth, theta, dilation."""
    return build_family(DenseNet, (6, 12, 24, 16),
                         bn_mode=bn_mode, activation=activation, activation_param=activation_param,
                         num_classes=num_classes, backend=backend, features_only=features_only,
                         memory_efficient=memory_efficient, input_3x3=input_3x3, growth=growth, theta=theta,
                         dilation=dilation, output_stride=output_stride)


@register_arch
def densenet169(bn_mode: str = "inplace", activation: str = "leaky_relu", activation_param: float = 0.01,
                num_classes: int = 1000, backend: str | None = None, features_only: bool = False,
                memory_efficient: bool | None = None, *, input_3x3: bool = False, growth: int = 32,
                theta: float = 0.5, dilation: int | Sequence[int] = 1, output_stride: int = 32) -> DenseNet:
    """DenseNet-169 (blocks of 6, 12, 32, 32 layers); options: input_3x3, growth, theta, dilation."""
    return build_family(DenseNet, (6, 12, 32, 32),
                         bn_mode=bn_mode, activation=activation, activation_param=activation_param,
                         num_classes=num_classes, backend=backend, features_only=features_only,
                         memory_efficient=memory_efficient, input_3x3=input_3x3, growth=growth, theta=theta,
                         dilation=dilation, output_stride=output_stride)


@register_arch
def densenet201(bn_mode: str = "inplace", activation: str = "leaky_relu", activation_param: float = 0.01,
                num_classes: int = 1000, backend: str | None = None, features_only: bool = False,
                memory_efficient: bool | None = None, *, input_3x3: bool = False, growth: int = 32,
                theta: float = 0.5, dilation: int | Sequence[int] = 1, output_stride: int = 32) -> DenseNet:
    """DenseNet-201 (blocks of 6, 12, 48, 32 layers); options: input_3x3, growth, theta, dilation."""
    return build_family(DenseNet, (6, 12, 48, 32),
                         bn_mode=bn_mode, activation=activation, activation_param=activation_param,
                         num_classes=num_classes, backend=backend, features_only=features_only,
                         memory_efficient=memory_efficient, input_3x3=input_3x3, growth=growth, theta=theta,
                         dilation=dilation, output_stride=output_stride)


@register_arch
def densenet264(bn_mode: str = "inplace", activation: str = "leaky_relu", activation_param: float = 0.01,
                num_classes: int = 1000, backend: str | None = None, features_only: bool = False,
                memory_efficient: bool | None = None, *, input_3x3: bool = False, growth: int = 32,
                theta: float = 0.5, dilation: int | Sequence[int] = 1, output_stride: int = 32) -> DenseNet:
    """DenseNet-264 (blocks of 6, 12, 64, 48 layers); options: input_3x3 (as published), growth, theta, dilation."""
    return build_family(DenseNet, (6, 12, 64, 48),
                         bn_mode=bn_mode, activation=activation, activation_param=activation_param,
                         num_classes=num_classes, backend=backend, features_only=features_only,
                         memory_efficient=memory_efficient, input_3x3=input_3x3, growth=growth, theta=theta,
                         dilation=dilation, output_stride=output_stride)
