"""DeepLabV3 head (atrous spatial pyramid pooling) with the authors' module names, as in the Vistas checkpoint.

Four parallel convolutions (1x1 and three dilated 3x3) are concatenated, normalised and reduced; a global-pooling
branch adds image context. In training the context is the mean over the whole map; at inference with a
`pooling_size` it is a sliding average over windows of that size (clipped to the map), replicate-padded back to
the map's size, so large images get a spatially varying context, as the authors' test script does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as functional

from ..errors import InvalidArgumentError
from ._blocks import init_conv_weights

NormAct = Callable[..., nn.Module]
HEAD_DILATIONS = {8: (12, 24, 36), 16: (6, 12, 18)}  # atrous rates at each output stride (8: the Vistas head's)


def pooling_window(pooling_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """Validate a pooling size (None, one int, or (height, width)) into a (height, width) pair of ints >= 1."""
    if pooling_size is None:
        return None
    values = (pooling_size, pooling_size) if isinstance(pooling_size, int) else tuple(pooling_size)
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise InvalidArgumentError(
            f"pooling_size must be a positive int or (height, width) of positive ints (feature-map pixels), "
            f"got {pooling_size!r}; the Vistas model uses 84"
        )
    return values


def sliding_average(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """Average over every `window` (clipped to the map) at stride 1, replicate-padded back to the input size.

    The padding puts (k - 1) // 2 rows before and the rest after, as the authors' head does; the box average is
    computed separably (rows, then columns), the same average at a fraction of the cost of a 2-D window.
    """
    height, width = min(window[0], x.shape[2]), min(window[1], x.shape[3])
    pooled = functional.avg_pool2d(x, (height, 1), stride=1)
    pooled = functional.avg_pool2d(pooled, (1, width), stride=1)
    top, left = (height - 1) // 2, (width - 1) // 2
    return functional.pad(pooled, (left, width - 1 - left, top, height - 1 - top), mode="replicate")


class DeepLabV3Head(nn.Module):
    """ASPP head: `map_convs` + `map_bn` + `red_conv`, plus the pooling branch `global_pooling_conv` +
    `global_pooling_bn` + `pool_red_conv`, summed and normalised by `red_bn` into `out_channels`."""

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int = 256,
                 dilations: Sequence[int] = (12, 24, 36), *, norm_act: NormAct,
                 pooling_size: int | Sequence[int] | None = None):
        super().__init__()
        if len(dilations) != 3 or not all(isinstance(d, int) and d >= 1 for d in dilations):
            raise InvalidArgumentError(f"dilations must be three ints >= 1, got {dilations!r}")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("hidden_channels", hidden_channels)):
            if not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.pooling_size = pooling_window(pooling_size)
        self.map_convs = nn.ModuleList([nn.Conv2d(in_channels, hidden_channels, 1, bias=False)] + [
            nn.Conv2d(in_channels, hidden_channels, 3, padding=d, dilation=d, bias=False) for d in dilations
        ])
        self.map_bn = norm_act(hidden_channels * 4)
        self.global_pooling_conv = nn.Conv2d(in_channels, hidden_channels, 1, bias=False)
        self.global_pooling_bn = norm_act(hidden_channels)
        self.red_conv = nn.Conv2d(hidden_channels * 4, out_channels, 1, bias=False)
        self.pool_red_conv = nn.Conv2d(hidden_channels, out_channels, 1, bias=False)
        self.red_bn = norm_act(out_channels)
        init_conv_weights(self, self.map_bn.activation, self.map_bn.activation_param)  # as the authors' head

    def set_pooling_size(self, pooling_size: int | Sequence[int] | None) -> None:
        """Change the inference pooling window (feature-map pixels); None pools the whole map."""
        self.pooling_size = pooling_window(pooling_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InvalidArgumentError(
                f"DeepLabV3Head expects features of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        out = self.map_bn(torch.cat([conv(x) for conv in self.map_convs], dim=1))
        out = self.red_conv(out)
        context = self.pool_red_conv(self.global_pooling_bn(self.pooled_context(x)))
        out += context  # broadcast over the map in training, one value per pixel at inference
        return self.red_bn(out)

    def pooled_context(self, x: torch.Tensor) -> torch.Tensor:
        """`global_pooling_conv` of the pooled input: (N, hidden, 1, 1) mean, or (N, hidden, H, W) sliding average.

        The 1x1 convolution has no bias, so it commutes with averaging; at inference it runs first, on the
        full map, which makes the sliding average cheaper (hidden instead of in_channels channels).
        """
        if self.training or self.pooling_size is None:
            return self.global_pooling_conv(x.mean(dim=(2, 3), keepdim=True))
        return sliding_average(self.global_pooling_conv(x), self.pooling_size)
