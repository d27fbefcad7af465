"""Which input sizes a network takes, fixed or dynamic, read from its structure (a meta-device blueprint will do).

Every zoo network takes any size from its output stride up (32 for the classifiers, 8 for the Vistas network:
DenseNet's 2x2 average poolings need it, the others would return maps of under one pixel per stride). A dynamic
height and width export as one graph for every size from a minimum up: twice the output stride for the classifiers
(below it the last map is one pixel and the exporter specialises the graph to it), and for a network with a
DeepLabV3 head (the Vistas model) as many strides as its inference pooling window (84 feature pixels: 672 px),
since below that the window is clipped to the map, which changes the graph. A module that is no zoo network is
taken at any size and exported dynamic only if the exporter succeeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn as nn

from ..errors import InvalidArgumentError
from ..models.deeplab import DeepLabV3Head

@dataclass(frozen=True)
class Geometry:
    """The output stride of a network and the smallest (height, width) of a dynamic-size export."""

    stride: int
    dynamic_minimum: tuple[int, int]

    def check_fixed(self, size: tuple[int, int]) -> None:
        """Reject a size the network cannot take, naming the smallest it can."""
        if min(size) < self.stride:
            raise InvalidArgumentError(f"image size {size[0]}x{size[1]} is below this network's output stride "
                                       f"({self.stride} px); use --image-size {self.stride} or more")

    def check_dynamic(self, size: tuple[int, int]) -> None:
        """Reject an example size below the smallest size a dynamic-size export covers."""
        low_h, low_w = self.dynamic_minimum
        if size[0] < low_h or size[1] < low_w:
            raise InvalidArgumentError(f"a dynamic-size export of this network covers {low_h}x{low_w} px and up; "
                                       f"give an --image-size of at least that (got {size[0]}x{size[1]}), or "
                                       f"export at a fixed size")


def network_geometry(network: nn.Module) -> Geometry:
    """The geometry of `network` (a zoo network, or any module: stride 1, dynamic from 2 px)."""
    info = getattr(network, "feature_info", None)
    stride = int(info[-1].stride) if info else 1
    low = (2 * stride, 2 * stride)
    for module in network.modules():
        if isinstance(module, DeepLabV3Head) and module.pooling_size is not None:
            window = module.pooling_size
            low = (max(low[0], window[0] * stride), max(low[1], window[1] * stride))
    return Geometry(stride, low)


def parse_image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) from one side or two values, each a positive integer."""
    values = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise InvalidArgumentError(f"image_size must be a positive int or (height, width) of positive ints, "
                                   f"got {image_size!r}")
    return values
