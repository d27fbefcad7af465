"""ResNet 18/34/50/101/152 (v1, post-activation blocks) on norm-act layers, as in the authors' model code.

Layout: `mod1` (conv1 7x7/2, bn1, `pool1` 3x3/2 unless mod2 is dilated), `mod2`..`mod5` of `blockN` and
`classifier.fc` (no `bn_out`). With `memory_efficient` (default for the in-place modes) each block's residual
addition and activation are folded into its last norm-act, which then keeps only its output for backward, and the
stem pooling keeps one byte per output instead of its input and int64 indices. Same function, same keys.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch.nn as nn

from ..errors import InvalidArgumentError
from ..layers import max_pool
from ._base import FeatureInfo, ZooNet
from ._blocks import NormAct, ResidualBlock, build_family
from ._checkpoint import Block, sequence
from ._registry import register_arch

BASIC_CHANNELS = (64, 64)
BOTTLENECK_CHANNELS = (64, 64, 256)
STEM_CHANNELS = 64


def module_dilations(dilation: int | Sequence[int], modules: int) -> tuple[int, ...]:
    """Per module dilation from 1 or one int per module; a dilated module keeps the resolution (no stride)."""
    values = (dilation,) if isinstance(dilation, int) and not isinstance(dilation, bool) else dilation
    if isinstance(values, Sequence) and len(values) == 1 and values[0] == 1:
        return (1,) * modules
    if (not isinstance(values, Sequence) or len(values) != modules
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in values)):
        raise InvalidArgumentError(f"dilation must be 1 or {modules} ints >= 1 (one per module), got {dilation!r}")
    return tuple(values)


class ResNet(ZooNet):
    """ResNet v1; stage outputs are those of mod2..mod5."""

    stage_downsamples = (False, True, True, True)  # mod2 keeps the stem's stride 4; mod3..mod5 halve it

    def __init__(self, structure: Sequence[int], norm_act: NormAct, *, bottleneck: bool,
                 dilation: int | Sequence[int] = 1, num_classes: int = 1000, features_only: bool = False,
                 memory_efficient: bool = True):
        super().__init__()
        dilations = module_dilations(dilation, len(structure))
        layers = [("conv1", nn.Conv2d(3, STEM_CHANNELS, 7, stride=2, padding=3, bias=False)),
                  ("bn1", norm_act(STEM_CHANNELS))]
        if dilations[0] == 1:
            layers.append(("pool1", max_pool(memory_efficient)))
        self.mod1 = nn.Sequential(OrderedDict(layers))
        in_channels, stride, self.feature_info = STEM_CHANNELS, 4 if dilations[0] == 1 else 2, []
        base = BOTTLENECK_CHANNELS if bottleneck else BASIC_CHANNELS
        for index, (blocks, module_dilation) in enumerate(zip(structure, dilations)):
            channels = [c * 2 ** index for c in base]
            module_stride = 2 if index > 0 and module_dilation == 1 else 1
            module = nn.Sequential()
            for block in range(blocks):
                module.add_module(f"block{block + 1}", ResidualBlock(
                    in_channels, channels, norm_act, activation=norm_act.activation,
                    activation_param=norm_act.activation_param,
                    stride=module_stride if block == 0 else 1, dilation=module_dilation,
                    fuse_residual=memory_efficient))
                in_channels = channels[-1]
            self.add_module(f"mod{index + 2}", module)
            stride *= module_stride
            self.feature_info.append(FeatureInfo(f"mod{index + 2}", in_channels, stride))
        self.num_features = in_channels
        self.features_only = features_only
        self.make_classifier(num_classes)

    def stage_blocks(self) -> list[list[Block]]:
        """mod1 (stem) and mod2's blocks, then mod3's, mod4's and mod5's (post-activation blocks read their
        input without writing it: the stage outputs need no copies)."""
        return [[Block(self.mod1)] + sequence(self.mod2), sequence(self.mod3), sequence(self.mod4),
                sequence(self.mod5)]


@register_arch
def resnet18(bn_mode: str = "inplace", activation: str = "leaky_relu", activation_param: float = 0.01,
             num_classes: int = 1000, backend: str | None = None, features_only: bool = False,
             memory_efficient: bool | None = None,
             *, dilation: int | Sequence[int] = 1, output_stride: int = 32) -> ResNet:
    """ResNet-18 v1 (2, 2, 2, 2 basic blocks)."""
    return build_family(ResNet, (2, 2, 2, 2), bottleneck=False, bn_mode=bn_mode, activation=activation,
                         activation_param=activation_param, num_classes=num_classes, backend=backend,
                         features_only=features_only, memory_efficient=memory_efficient, dilation=dilation,
                         output_stride=output_stride)


@register_arch
def resnet34(bn_mode: str = "inplace", activation: str = "leaky_relu", activation_param: float = 0.01,
             num_classes: int = 1000, backend: str | None = None, features_only: bool = False,
             memory_efficient: bool | None = None,
             *, dilation: int | Sequence[int] = 1, output_stride: int = 32) -> ResNet:
    """ResNet-34 v1 (3, 4, 6, 3 basic blocks)."""
    return build_family(ResNet, (3, 4, 6, 3), bottleneck=False, bn_mode=bn_mode, activation=activation,
                         activation_param=activation_param, num_classes=num_classes, backend=backend,
                         features_only=features_only, memory_efficient=memory_efficient, dilation=dilation,
                         output_stride=output_stride)


@register_arch
def resnet50(bn_mode: str = "inplace", activation: str = "leaky_relu", activation_param: float = 0.01,
             num_classes: int = 1000, backend: str | None = None, features_only: bool = False,
             memory_efficient: bool | None = None,
             *, dilation: int | Sequence[int] = 1, output_stride: int = 32) -> ResNet:
    """ResNet-50 v1 (3, 4, 6, 3 bottleneck blocks)."""
    return build_family(ResNet, (3, 4, 6, 3), bottleneck=True, bn_mode=bn_mode, activation=activation,
                         activation_param=activation_param, num_classes=num_classes, backend=backend,
                         features_only=features_only, memory_efficient=memory_efficient, dilation=dilation,
                         output_stride=output_stride)


@register_arch
def resnet101(bn_mode: str = "inplace", activation: str = "leaky_relu", activation_param: float = 0.01,
              num_classes: int = 1000, backend: str | None = None, features_only: bool = False,
              memory_efficient: bool | None = None,
              *, dilation: int | Sequence[int] = 1, output_stride: int = 32) -> ResNet:
    """ResNet-101 v1 (3, 4, 23, 3 bottleneck blocks)."""
    return build_family(ResNet, (3, 4, 23, 3), bottleneck=True, bn_mode=bn_mode, activation=activation,
                         activation_param=activation_param, num_classes=num_classes, backend=backend,
                         features_only=features_only, memory_efficient=memory_efficient, dilation=dilation,
                         output_stride=output_stride)


@register_arch
def resnet152(bn_mode: str = "inplace", activation: str = "leaky_relu", activation_param: float = 0.01,
              num_classes: int = 1000, backend: str | None = None, features_only: bool = False,
              memory_efficient: bool | None = None,
              *, dilation: int | Sequence[int] = 1, output_stride: int = 32) -> ResNet:
    """ResNet-152 v1 (3, 8, 36, 3 bottleneck blocks)."""
    return build_family(ResNet, (3, 8, 36, 3), bottleneck=True, bn_mode=bn_mode, activation=activation,
                         activation_param=activation_param, num_classes=num_classes, backend=backend,
                         features_only=features_only, memory_efficient=memory_efficient, dilation=dilation,
                         output_stride=output_stride)
