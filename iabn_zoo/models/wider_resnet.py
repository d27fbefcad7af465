"""Wide ResNet 16/20/38 and their A2 variants with identity-mapping blocks, as in the authors' model code.

Layout: `mod1` (one 3x3 conv), six residual modules `mod2`..`mod7` preceded by max pooling `pool2`..`pool6`
(A2: only `pool2`, `pool3`; later modules down-sample with a strided first block and the last two use dropout),
`bn_out`, `classifier.fc`. A2 with `dilation=True` keeps output stride 8 (dilation 2 in mod5, 4 in mod6 and mod7):
the body of the authors' segmentation model. With `memory_efficient` (default for the in-place modes) the poolings
keep one byte per output for backward instead of their input and int64 indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch.nn as nn

from ..errors import InvalidArgumentError
from ..layers import max_pool
from ._base import FeatureInfo, ZooNet
from ._blocks import IdentityResidualBlock, NormAct, build_family, stage_dilations
from ._checkpoint import Block, sequence
from ._registry import register_arch

# Inner channels of the blocks of mod2..mod7 (two values: basic blocks, three: bottleneck blocks).
MODULE_CHANNELS = ((128, 128), (256, 256), (512, 512), (512, 1024), (512, 1024, 2048), (1024, 2048, 4096))
A2_DROPOUT = {4: 0.3, 5: 0.5}  # module index (0 = mod2) -> Dropout2d probability in the A2 variants
STEM_CHANNELS = 64


def module_dilations(dilation: bool | Sequence[int]) -> tuple[int, ...]:
    """Per module dilation of mod2..mod7: False = none, True = the authors' output stride 8 (2 in mod5, 4 in mod6
    and mod7), or six ints >= 1; a dilated module keeps the resolution (no pooling, no strided block)."""
    if isinstance(dilation, bool):
        return stage_dilations(8, WiderResNet.stage_downsamples) if dilation else (1,) * len(MODULE_CHANNELS)
    values = tuple(dilation) if isinstance(dilation, Sequence) else ()
    if len(values) != len(MODULE_CHANNELS) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1
                                                      for d in values):
        raise InvalidArgumentError(f"dilation must be True, False or {len(MODULE_CHANNELS)} ints >= 1 (one per "
                                   f"module), got {dilation!r}")
    return values


class WiderResNet(ZooNet):
    """Wide ResNet with pre-activation blocks; stage outputs are those of mod2..mod7 (the last after `bn_out`)."""

    copy_between_stages = True
    stage_downsamples = (True, True, True, True, True, False)  # pooling or a strided block before mod2..mod6

    def __init__(self, structure: Sequence[int], norm_act: NormAct, *, a2: bool = False,
                 dilation: bool | Sequence[int] = False,
                 num_classes: int = 1000, features_only: bool = False, memory_efficient: bool = True):
        super().__init__()
        self.mod1 = nn.Sequential()
        self.mod1.add_module("conv1", nn.Conv2d(3, STEM_CHANNELS, 3, padding=1, bias=False))
        in_channels, stride, self.feature_info = STEM_CHANNELS, 1, []
        num_pools = 2 if a2 else 5
        for index, (blocks, channels, block_dilation) in enumerate(zip(structure, MODULE_CHANNELS,
                                                                        module_dilations(dilation))):
            downsample = self.stage_downsamples[index] and block_dilation == 1
            first_stride = 2 if downsample and index >= num_pools else 1
            dropout = partial(nn.Dropout2d, p=A2_DROPOUT[index]) if a2 and index in A2_DROPOUT else None
            if downsample and index < num_pools:
                self.add_module(f"pool{index + 2}", max_pool(memory_efficient))
                stride *= 2
            module = nn.Sequential()
            for block in range(blocks):
                module.add_module(f"block{block + 1}", IdentityResidualBlock(
                    in_channels, channels, norm_act, stride=first_stride if block == 0 else 1,
                    dilation=block_dilation, dropout=dropout))
                in_channels = channels[-1]
            self.add_module(f"mod{index + 2}", module)
            stride *= first_stride
            self.feature_info.append(FeatureInfo(f"mod{index + 2}", in_channels, stride))
        self.finish_preactivation(norm_act(in_channels), stride, num_classes=num_classes, features_only=features_only)

    def stage_blocks(self) -> list[list[Block]]:
        """Per module mod2..mod7: the pooling before it if any and its blocks; mod1 in front of mod2, `bn_out`
        after mod7."""
        stages = []
        for index in range(2, 8):
            pool = getattr(self, f"pool{index}", None)
            blocks = ([Block(self.mod1)] if index == 2 else []) + ([Block(pool)] if pool is not None else [])
            stages.append(blocks + sequence(getattr(self, f"mod{index}")))
        stages[-1].append(Block(self.bn_out))
        return stages


def _check_dilation(dilation: object) -> bool:
    """A2's `dilation` is a switch (output stride 8 or 32), not a list as in the other families."""
    if not isinstance(dilation, bool):
        raise InvalidArgumentError(f"dilation of the A2 Wide ResNets is True (output stride 8) or False, "
                                   f"got {dilation!r}")
    return dilation


@register_arch
def wider_resnet16(bn_mode: str = "inplace", activation: str = "leaky_relu", activation_param: float = 0.01,
                   num_classes: int = 1000, backend: str | None = None, features_only: bool = False,
                   memory_efficient: bool | None = None, *, output_stride: int = 32) -> WiderResNet:
    """Wide ResNet-16 (one block per module), down-sampling by max pooling before mod2..mod6."""
    return build_family(WiderResNet, (1, 1, 1, 1, 1, 1), bn_mode=bn_mode, activation=activation,
                         activation_param=activation_param, num_classes=num_classes, backend=backend,
                         features_only=features_only, memory_efficient=memory_efficient, a2=False,
                         output_stride=output_stride)


@register_arch
def wider_resnet20(bn_mode: str = "inplace", activation: str = "leaky_relu", activation_param: float = 0.01,
                   num_classes: int = 1000, backend: str | None = None, features_only: bool = False,
                   memory_efficient: bool | None = None, *, output_stride: int = 32) -> WiderResNet:
    """Wide ResNet-20 (1, 1, 1, 3, 1, 1 blocks), down-sampling by max pooling before mod2..mod6."""
    return build_family(WiderResNet, (1, 1, 1, 3, 1, 1), bn_mode=bn_mode, activation=activation,
                         activation_param=activation_param, num_classes=num_classes, backend=backend,
                         features_only=features_only, memory_efficient=memory_efficient, a2=False,
                         output_stride=output_stride)


@register_arch
def wider_resnet38(bn_mode: str = "inplace", activation: str = "leaky_relu", activation_param: float = 0.01,
                   num_classes: int = 1000, backend: str | None = None, features_only: bool = False,
                   memory_efficient: bool | None = None, *, output_stride: int = 32) -> WiderResNet:
    """Wide ResNet-38 (3, 3, 6, 3, 1, 1 blocks), down-sampling by max pooling before mod2..mod6."""
    return build_family(WiderResNet, (3, 3, 6, 3, 1, 1), bn_mode=bn_mode, activation=activation,
                         activation_param=activation_param, num_classes=num_classes, backend=backend,
                         features_only=features_only, memory_efficient=memory_efficient, a2=False,
                         output_stride=output_stride)


@register_arch
def wider_resnet16_a2(bn_mode: str = "inplace", activation: str = "leaky_relu", activation_param: float = 0.01,
                      num_classes: int = 1000, backend: str | None = None, features_only: bool = False,
                      memory_efficient: bool | None = None,
                      *, dilation: bool = False, output_stride: int = 32) -> WiderResNet:
    """Wide ResNet-16 A2: pooling before mod2, mod3, strided blocks after, dropout in mod6, mod7; `dilation`: OS 8."""
    return build_family(WiderResNet, (1, 1, 1, 1, 1, 1), bn_mode=bn_mode, activation=activation,
                         activation_param=activation_param, num_classes=num_classes, backend=backend,
                         features_only=features_only, memory_efficient=memory_efficient, a2=True,
                         dilation=_check_dilation(dilation), output_stride=output_stride)


@register_arch
def wider_resnet20_a2(bn_mode: str = "inplace", activation: str = "leaky_relu", activation_param: float = 0.01,
                      num_classes: int = 1000, backend: str | None = None, features_only: bool = False,
                      memory_efficient: bool | None = None,
                      *, dilation: bool = False, output_stride: int = 32) -> WiderResNet:
    """Wide ResNet-20 A2: pooling before mod2, mod3, strided blocks after, dropout in mod6, mod7; `dilation`: OS 8."""
    return build_family(WiderResNet, (1, 1, 1, 3, 1, 1), bn_mode=bn_mode, activation=activation,
                         activation_param=activation_param, num_classes=num_classes, backend=backend,
                         features_only=features_only, memory_efficient=memory_efficient, a2=True,
                         dilation=_check_dilation(dilation), output_stride=output_stride)


@register_arch
def wider_resnet38_a2(bn_mode: str = "inplace", activation: str = "leaky_relu", activation_param: float = 0.01,
                      num_classes: int = 1000, backend: str | None = None, features_only: bool = False,
                      memory_efficient: bool | None = None,
                      *, dilation: bool = False, output_stride: int = 32) -> WiderResNet:
    """Wide ResNet-38 A2: pooling before mod2, mod3, strided blocks after, dropout in mod6, mod7; `dilation`: OS 8
    (the Vistas segmentation body, built with num_classes=0)."""
    return build_family(WiderResNet, (3, 3, 6, 3, 1, 1), bn_mode=bn_mode, activation=activation,
                         activation_param=activation_param, num_classes=num_classes, backend=backend,
                         features_only=features_only, memory_efficient=memory_efficient, a2=True,
                         dilation=_check_dilation(dilation), output_stride=output_stride)
