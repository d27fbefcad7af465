"""Segmentation networks: `SegmentationNet` (`body`, DeepLabV3 `head`, 1x1 `cls`) and the Vistas network on it, a
dilated WideResNet38-A2 body as in the checkpoint (`deeplabv3` builds the same on any zoo backbone).

`forward` returns class logits at the body's output resolution, 1/output_stride of the input, ceil-sized (ceil(H / 8)
x ceil(W / 8) at the Vistas network's stride 8); resizing them to the image, test-time scales and flips belong to
the predictor (`iabn_zoo.tasks.segment`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..errors import InvalidArgumentError
from ..layers import make_norm_act
from ._base import FeatureInfo, ZooModule, ZooNet, check_num_classes
from ._checkpoint import Block
from ._registry import register_arch
from ._blocks import check_output_stride
from .deeplab import HEAD_DILATIONS, DeepLabV3Head, pooling_window


class SegmentationNet(ZooModule):
    """`body` (a ZooNet backbone) -> `head` -> `cls` (1x1 conv with bias); num_classes=0 leaves out `cls`.

    With `features_only=True` the forward returns the body's stage maps followed by the head's output.
    """

    def __init__(self, body: ZooNet, head: DeepLabV3Head, num_classes: int, *, features_only: bool = False):
        super().__init__()
        self.body = body
        self.head = head
        self.features_only = features_only
        head_stride = body.feature_info[-1].stride  # the head keeps the resolution of the body's output
        self.feature_info = [FeatureInfo(f"body.{info.module}", info.channels, info.stride)  # as named_modules
                             for info in body.feature_info] + [FeatureInfo("head", head.out_channels, head_stride)]
        self.make_classifier(num_classes)

    def make_classifier(self, num_classes: int) -> None:
        """(Re)build `cls` for `num_classes` outputs (default init, as the authors'); 0 or features_only: none."""
        num_classes = check_num_classes(num_classes)
        if hasattr(self, "cls"):
            del self.cls
        if num_classes > 0 and not self.features_only:
            self.cls = nn.Conv2d(self.head.out_channels, num_classes, 1)
        self.num_classes = num_classes if not self.features_only else 0

    def get_classifier(self) -> nn.Module:
        """The 1x1 classifier convolution, or `nn.Identity()` when there is none."""
        return self.cls if hasattr(self, "cls") else nn.Identity()

    def check_input(self, x: torch.Tensor) -> None:
        """The body's input check."""
        self.body.check_input(x)

    def stage_blocks(self) -> list[list[Block]]:
        """The body's stages, then the head (whose output, at the body's output stride, is what `cls` classifies:
        H/8 x W/8 for the Vistas model)."""
        return self.body.stage_blocks() + [[Block(self.head)]]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.features_only:
            return self.forward_stages(x)
        self.check_input(x)
        features = self.forward_features(x)
        return self.cls(features) if hasattr(self, "cls") else features


def check_head_channels(head_channels: object) -> int:
    """Validate the DeepLabV3 head's width."""
    if not isinstance(head_channels, int) or isinstance(head_channels, bool) or head_channels < 1:
        raise InvalidArgumentError(f"head_channels must be a positive integer, got {head_channels!r}")
    return head_channels


@register_arch
def wider_resnet38_a2_deeplab3(bn_mode: str = "inplace", activation: str = "leaky_relu",
                               activation_param: float = 0.01, num_classes: int = 65, backend: str | None = None,
                               features_only: bool = False, pooling_size: int | Sequence[int] | None = 84,
                               head_channels: int = 256, *, output_stride: int = 8) -> SegmentationNet:
    """The Vistas model: WRN38-A2 with output stride 8 (the published layout; 16 possible), DeepLabV3 head
    (`head_channels`, inference pooling window `pooling_size` in feature-map pixels, None = whole map) and a 1x1
    classifier; logits at 1/output_stride of the input."""
    from .wider_resnet import wider_resnet38_a2

    check_num_classes(num_classes)  # cheap checks first: the body alone holds over 100M parameters
    pooling_window(pooling_size)
    check_head_channels(head_channels)
    check_output_stride(output_stride, tuple(HEAD_DILATIONS))
    body = wider_resnet38_a2(bn_mode=bn_mode, activation=activation, activation_param=activation_param,
                             num_classes=0, backend=backend, output_stride=output_stride)
    norm_act = make_norm_act(bn_mode, activation, activation_param, backend=backend)
    head = DeepLabV3Head(body.num_features, head_channels, head_channels, HEAD_DILATIONS[output_stride],
                         norm_act=norm_act, pooling_size=pooling_size)
    return SegmentationNet(body, head, num_classes, features_only=features_only)
