"""DeepLabV3 on any classification backbone of the zoo: `deeplabv3_<arch>` for every architecture the families
register, and the Vistas network `wider_resnet38_a2_deeplab3` (the published layout), all made by one constructor.

The backbone is built without its classifier and dilated to output stride 8 or 16 (its last down-sampling stages
dilate instead, DeepLabV3's layout); the head is the Vistas network's DeepLabV3 head, with atrous rates 12, 24, 36
at stride 8 and 6, 12, 18 at stride 16, then a 1x1 classifier. The logits come at 1/output_stride of the input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import InvalidArgumentError
from ..layers import make_norm_act
from . import densenet, resnet, resnext, wider_resnet
from ._base import check_num_classes
from ._blocks import check_output_stride
from ._registry import get_arch, register_arch, registered_from
from .deeplab import HEAD_DILATIONS, DeepLabV3Head, pooling_window
from .segmentation import SegmentationNet, check_head_channels

PREFIX = "deeplabv3_"
RESERVED = {"bn_mode", "activation", "activation_param", "num_classes", "backend", "memory_efficient",
            "output_stride", "dilation", "features_only"}  # set by the segmentation network, not backbone_kwargs
BACKBONE_MODULES = tuple(module.__name__ for module in (resnext, wider_resnet, resnet, densenet))


def deeplabv3(backbone: str, *, bn_mode: str = "inplace", activation: str = "leaky_relu",
              activation_param: float = 0.01, num_classes: int = 21, backend: str | None = None,
              features_only: bool = False, memory_efficient: bool | None = None, output_stride: int = 8,
              head_channels: int = 256, pooling_size: int | Sequence[int] | None = None,
              backbone_kwargs: dict[str, Any] | None = None) -> SegmentationNet:
    """`body` = classification architecture `backbone` dilated to `output_stride` (8 or 16), without classifier,
    with the architecture's other options in `backbone_kwargs` (e.g. {"input_3x3": True});
    `head` = DeepLabV3 head of `head_channels`, global context pooled over the whole map (or, at inference, over
    `pooling_size` windows of feature-map pixels); `cls` = 1x1 convolution to `num_classes`."""
    check_num_classes(num_classes)  # cheap checks before the backbone is built
    check_output_stride(output_stride, tuple(HEAD_DILATIONS))
    check_head_channels(head_channels)
    pooling_window(pooling_size)
    if backbone_kwargs is not None and (not isinstance(backbone_kwargs, dict) or set(backbone_kwargs) & RESERVED):
        raise InvalidArgumentError(f"backbone_kwargs must be a dict of {backbone}'s options other than "
                                   f"{', '.join(sorted(RESERVED))}, got {backbone_kwargs!r}")
    body = get_arch(backbone)(bn_mode=bn_mode, activation=activation, activation_param=activation_param,
                              num_classes=0, backend=backend, memory_efficient=memory_efficient,
                              output_stride=output_stride, **(backbone_kwargs or {}))
    norm_act = make_norm_act(bn_mode, activation, activation_param, backend=backend)
    head = DeepLabV3Head(body.num_features, head_channels, head_channels, HEAD_DILATIONS[output_stride],
                         norm_act=norm_act, pooling_size=pooling_size)
    return SegmentationNet(body, head, num_classes, features_only=features_only)


def _constructor(backbone: str) -> Callable[..., SegmentationNet]:
    """The registered `deeplabv3_<backbone>`: `deeplabv3` with the backbone fixed (it holds only the name)."""

    def constructor(bn_mode: str = "inplace", activation: str = "leaky_relu", activation_param: float = 0.01,
                    num_classes: int = 21, backend: str | None = None, features_only: bool = False,
                    memory_efficient: bool | None = None, *, output_stride: int = 8, head_channels: int = 256,
                    pooling_size: int | Sequence[int] | None = None,
                    backbone_kwargs: dict[str, Any] | None = None) -> SegmentationNet:
        return deeplabv3(backbone, bn_mode=bn_mode, activation=activation, activation_param=activation_param,
                         num_classes=num_classes, backend=backend, features_only=features_only,
                         memory_efficient=memory_efficient, output_stride=output_stride,
                         head_channels=head_channels, pooling_size=pooling_size, backbone_kwargs=backbone_kwargs)

    constructor.__name__ = constructor.__qualname__ = PREFIX + backbone
    constructor.__doc__ = f"DeepLabV3 on {backbone} dilated to output_stride 8 (default) or 16; see `deeplabv3`."
    constructor.backbone = backbone
    return constructor


def backbone_of(arch: str) -> str | None:
    """The classification architecture under DeepLabV3 architecture `arch`; None for any other architecture."""
    return getattr(get_arch(arch), "backbone", None)


for _backbone in registered_from(BACKBONE_MODULES):
    register_arch(_constructor(_backbone), task="segmentation")


@register_arch(task="segmentation")
def wider_resnet38_a2_deeplab3(bn_mode: str = "inplace", activation: str = "leaky_relu",
                               activation_param: float = 0.01, num_classes: int = 65, backend: str | None = None,
                               features_only: bool = False, pooling_size: int | Sequence[int] | None = 84,
                               head_channels: int = 256, memory_efficient: bool | None = None, *,
                               output_stride: int = 8) -> SegmentationNet:
    """The Vistas model: `deeplabv3` on WRN38-A2 with output stride 8 (the published layout; 16 possible), its
    head pooling `pooling_size` feature-map pixels at inference (None = whole map), 65 classes; logits at
    1/output_stride of the input. Its state_dict is the checkpoint's `body`, `head` and `cls`."""
    return deeplabv3("wider_resnet38_a2", bn_mode=bn_mode, activation=activation, activation_param=activation_param,
                     num_classes=num_classes, backend=backend, features_only=features_only,
                     memory_efficient=memory_efficient, output_stride=output_stride, head_channels=head_channels,
                     pooling_size=pooling_size)
