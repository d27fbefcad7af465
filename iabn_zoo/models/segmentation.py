"""Segmentation networks: `SegmentationNet` (`body`, DeepLabV3 `head`, 1x1 `cls`); `deeplabv3` builds every one of
them, the Vistas network (a dilated WideResNet38-A2 body, as in the checkpoint) included.

`forward` returns class logits at the body's output resolution, 1/output_stride of the input, ceil-sized (ceil(H / 8)
x ceil(W / 8) at the Vistas network's stride 8); resizing them to the image, test-time scales and flips belong to
the predictor (`iabn_zoo.tasks.segment`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import InvalidArgumentError
from ._base import FeatureInfo, ZooModule, ZooNet, check_num_classes
from ._checkpoint import Block
from .deeplab import DeepLabV3Head


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
