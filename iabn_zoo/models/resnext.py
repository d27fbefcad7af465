"""ResNeXt 50/101/152 with identity-mapping (pre-activation) bottleneck blocks, as in the authors' model code.

Layout: `mod1` (stem: one 7x7 conv, or three 3x3 convs with `input_3x3`, then 3x3/2 max pooling), `mod2`..`mod5`
(residual modules of `blockN`), `bn_out` and `classifier.fc`. With `memory_efficient` (default for the in-place
modes) the stem pooling keeps one byte per output for backward instead of its input and int64 indices.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

from ..errors import InvalidArgumentError
from ._base import FeatureInfo, ZooNet
from ._blocks import IdentityResidualBlock, NormAct, build_family, input_stem
from ._checkpoint import Block, sequence
from ._registry import register_arch

Dilation = int | Sequence[int | Sequence[int]]
BASE_CHANNELS = (128, 128, 256)  # inner channels of mod2's blocks, doubled by every following module
STEM_CHANNELS = 64


def block_dilations(dilation: Dilation, structure: Sequence[int]) -> list[list[int] | None]:
    """Per module, None for the usual strided down-sampling or one dilation per block (no stride then).

    `dilation` is 1, or four entries, each 1 (usual), an int (that dilation for every block) or one int per block.
    """
    if dilation == 1:
        return [None] * len(structure)
    if isinstance(dilation, int) or not isinstance(dilation, Sequence) or len(dilation) != len(structure):
        raise InvalidArgumentError(f"dilation must be 1 or {len(structure)} values (one per module, each an int or "
                                   f"a list with one int per block), got {dilation!r}")
    modules: list[list[int] | None] = []
    for entry, blocks in zip(dilation, structure):
        per_block = [entry] * blocks if isinstance(entry, int) else list(entry)
        if len(per_block) != blocks or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1
                                               for d in per_block):
            raise InvalidArgumentError(f"dilation {entry!r} does not give one int >= 1 to each of {blocks} blocks")
        modules.append(None if entry == 1 else per_block)
    return modules


class ResNeXt(ZooNet):
    """Pre-activation ResNeXt; stage outputs are those of mod2..mod5 (the last one after `bn_out`)."""

    copy_between_stages = True
    stage_downsamples = (False, True, True, True)  # mod2 keeps the stem's stride 4; mod3..mod5 halve it

    def __init__(self, structure: Sequence[int], norm_act: NormAct, *, groups: int = 64, input_3x3: bool = True,
                 dilation: Dilation = 1, num_classes: int = 1000, features_only: bool = False,
                 memory_efficient: bool = True):
        super().__init__()
        if not isinstance(groups, int) or groups < 1 or BASE_CHANNELS[1] % groups:
            raise InvalidArgumentError(f"groups must be a positive divisor of {BASE_CHANNELS[1]}, got {groups!r}")
        self.mod1 = input_stem(norm_act, STEM_CHANNELS, input_3x3=input_3x3, memory_efficient=memory_efficient)
        in_channels, stride, self.feature_info = STEM_CHANNELS, 4, []
        for index, (blocks, dilations) in enumerate(zip(structure, block_dilations(dilation, structure))):
            channels = [c * 2 ** index for c in BASE_CHANNELS]
            module_stride = 2 if index > 0 and dilations is None else 1
            module = nn.Sequential()
            for block in range(blocks):
                module.add_module(f"block{block + 1}", IdentityResidualBlock(
                    in_channels, channels, norm_act, stride=module_stride if block == 0 else 1,
                    dilation=1 if dilations is None else dilations[block], groups=groups))
                in_channels = channels[-1]
            self.add_module(f"mod{index + 2}", module)
            stride *= module_stride
            self.feature_info.append(FeatureInfo(f"mod{index + 2}", in_channels, stride))
        self.finish_preactivation(norm_act(in_channels), stride, num_classes=num_classes, features_only=features_only)

    def stage_blocks(self) -> list[list[Block]]:
        """mod1 (stem) and mod2's blocks, mod3's, mod4's, mod5's and `bn_out`."""
        return [[Block(self.mod1)] + sequence(self.mod2), sequence(self.mod3), sequence(self.mod4),
                sequence(self.mod5) + [Block(self.bn_out)]]


@register_arch
def resnext50(bn_mode: str = "inplace", activation: str = "leaky_relu", activation_param: float = 0.01,
              num_classes: int = 1000, backend: str | None = None, features_only: bool = False,
              memory_efficient: bool | None = None, *, input_3x3: bool = True, dilation: Dilation = 1,
              groups: int = 64, output_stride: int = 32) -> ResNeXt:
    """ResNeXt-50 (3, 4, 6, 3 blocks), 64 groups; input_3x3 stem by default as in the published models."""
    return build_family(ResNeXt, (3, 4, 6, 3),
                         bn_mode=bn_mode, activation=activation, activation_param=activation_param,
                         num_classes=num_classes, backend=backend, features_only=features_only,
                         memory_efficient=memory_efficient, input_3x3=input_3x3, dilation=dilation, groups=groups,
                         output_stride=output_stride)


@register_arch
def resnext101(bn_mode: str = "inplace", activation: str = "leaky_relu", activation_param: float = 0.01,
               num_classes: int = 1000, backend: str | None = None, features_only: bool = False,
               memory_efficient: bool | None = None, *, input_3x3: bool = True, dilation: Dilation = 1,
               groups: int = 64, output_stride: int = 32) -> ResNeXt:
    """ResNeXt-101 (3, 4, 23, 3 blocks), 64 groups; input_3x3 stem by default as in the published models."""
    return build_family(ResNeXt, (3, 4, 23, 3),
                         bn_mode=bn_mode, activation=activation, activation_param=activation_param,
                         num_classes=num_classes, backend=backend, features_only=features_only,
                         memory_efficient=memory_efficient, input_3x3=input_3x3, dilation=dilation, groups=groups,
                         output_stride=output_stride)


@register_arch
def resnext152(bn_mode: str = "inplace", activation: str = "leaky_relu", activation_param: float = 0.01,
               num_classes: int = 1000, backend: str | None = None, features_only: bool = False,
               memory_efficient: bool | None = None, *, input_3x3: bool = True, dilation: Dilation = 1,
               groups: int = 64, output_stride: int = 32) -> ResNeXt:
    """ResNeXt-152 (3, 8, 36, 3 blocks), 64 groups; input_3x3 stem by default as in the published models."""
    return build_family(ResNeXt, (3, 8, 36, 3),
                         bn_mode=bn_mode, activation=activation, activation_param=activation_param,
                         num_classes=num_classes, backend=backend, features_only=features_only,
                         memory_efficient=memory_efficient, input_3x3=input_3x3, dilation=dilation, groups=groups,
                         output_stride=output_stride)
