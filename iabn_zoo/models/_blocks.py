"""Residual blocks of the ResNeXt, Wide ResNet and ResNet families, module for module as the authors named them.

`IdentityResidualBlock` is the pre-activation (identity-mapping) block of ResNeXt and Wide ResNet: its norm-act
layers come before the convolutions, so with in-place norm-act layers the block keeps nothing for backward but
their outputs. `ResidualBlock` is the post-activation (v1) block of ResNet; with `fuse_residual=True` its last
norm-act computes act(bn(x) + shortcut) in one in-place step instead of BN, an addition and an activation.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from ..errors import InvalidArgumentError
from ..layers import InPlaceABN, activate_, make_norm_act, max_pool

NormAct = Callable[..., nn.Module]
DropoutFactory = Callable[[], nn.Module]


def modifies_input(norm_act_layer: nn.Module) -> bool:
    """Whether a norm-act layer overwrites its input (the in-place modes) rather than returning a new tensor."""
    return isinstance(norm_act_layer, InPlaceABN)


def check_channels(channels: Sequence[int], groups: int) -> tuple[int, ...]:
    """Validate a block's inner channels: two values (basic block) or three (bottleneck, which may be grouped)."""
    channels = tuple(channels)
    if len(channels) not in (2, 3) or not all(isinstance(c, int) and c > 0 for c in channels):
        raise InvalidArgumentError(f"channels must be two or three positive integers, got {channels!r}")
    if len(channels) == 2 and groups != 1:
        raise InvalidArgumentError("grouped convolutions (groups > 1) need a bottleneck block (three channels)")
    return channels


def conv3x3(in_channels: int, out_channels: int, *, stride: int = 1, dilation: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 convolution without bias whose padding keeps the size at stride 1, for any dilation."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, groups=groups,
                     bias=False)


def conv1x1(in_channels: int, out_channels: int, *, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias."""
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


def with_dropout(layers: list, dropout: DropoutFactory | None) -> list:
    """Insert the `dropout` layer before the last convolution, where the authors put it."""
    if dropout is None:
        return layers
    return layers[:-1] + [("dropout", dropout())] + layers[-1:]


class IdentityResidualBlock(nn.Module):
    """Pre-activation block: out = convs(bn1(x)) + shortcut, the shortcut being x or proj_conv(bn1(x)).

    Basic: conv1 (3x3, strided) -> bn2 -> conv2. Bottleneck: conv1 (1x1, strided) -> bn2 -> conv2 (3x3, grouped,
    dilated) -> bn3 -> conv3 (1x1). Keys: bn1, convs.*, proj_conv (only when the shape changes).
    """

    def __init__(self, in_channels: int, channels: Sequence[int], norm_act: NormAct, *, stride: int = 1,
                 dilation: int = 1, groups: int = 1, dropout: DropoutFactory | None = None):
        super().__init__()
        channels = check_channels(channels, groups)
        self.bn1 = norm_act(in_channels)
        if len(channels) == 2:
            layers = [
                ("conv1", conv3x3(in_channels, channels[0], stride=stride, dilation=dilation)),
                ("bn2", norm_act(channels[0])),
                ("conv2", conv3x3(channels[0], channels[1], dilation=dilation)),
            ]
        else:
            layers = [
                ("conv1", conv1x1(in_channels, channels[0], stride=stride)),
                ("bn2", norm_act(channels[0])),
                ("conv2", conv3x3(channels[0], channels[1], dilation=dilation, groups=groups)),
                ("bn3", norm_act(channels[1])),
                ("conv3", conv1x1(channels[1], channels[2])),
            ]
        self.convs = nn.Sequential(OrderedDict(with_dropout(layers, dropout)))
        if stride != 1 or in_channels != channels[-1]:
            self.proj_conv = conv1x1(in_channels, channels[-1], stride=stride)
        self.out_channels = channels[-1]

    @property
    def overwrites_input(self) -> bool:
        """Whether the block writes over its input (an in-place bn1 does), which grad checkpointing must know."""
        return modifies_input(self.bn1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "proj_conv"):
            normalized = self.bn1(x)
            shortcut = self.proj_conv(normalized)
        else:
            # An in-place bn1 overwrites x, which is the shortcut: only then is a (transient, unsaved) copy needed.
            shortcut = x.clone() if modifies_input(self.bn1) else x
            normalized = self.bn1(x)
        out = self.convs(normalized)
        return out.add_(shortcut)


class ResidualBlock(nn.Module):
    """Post-activation (v1) block: out = act(bn_last(convs(x)) + shortcut), shortcut x or proj_bn(proj_conv(x)).

    Basic: conv1 (3x3, strided) -> bn1 -> conv2 -> bn2. Bottleneck: conv1 (1x1) -> bn1 -> conv2 (3x3, strided) ->
    bn2 -> conv3 (1x1) -> bn3. With `fuse_residual`, the last norm-act adds the shortcut and activates in place
    (it keeps only its output for backward); otherwise it is an identity-activation BN followed by addition and
    activation, the authors' formulation. Both compute the same function and have the same keys.
    """

    def __init__(self, in_channels: int, channels: Sequence[int], norm_act: NormAct, *, activation: str,
                 activation_param: float, stride: int = 1, dilation: int = 1, fuse_residual: bool = False):
        super().__init__()
        channels = check_channels(channels, 1)
        self.activation = activation
        self.activation_param = activation_param
        self.fuse_residual = fuse_residual
        last_bn = norm_act(channels[-1]) if fuse_residual else norm_act(channels[-1], activation="identity")
        if len(channels) == 2:
            layers = [
                ("conv1", conv3x3(in_channels, channels[0], stride=stride, dilation=dilation)),
                ("bn1", norm_act(channels[0])),
                ("conv2", conv3x3(channels[0], channels[1], dilation=dilation)),
                ("bn2", last_bn),
            ]
        else:
            layers = [
                ("conv1", conv1x1(in_channels, channels[0])),
                ("bn1", norm_act(channels[0])),
                ("conv2", conv3x3(channels[0], channels[1], stride=stride, dilation=dilation)),
                ("bn2", norm_act(channels[1])),
                ("conv3", conv1x1(channels[1], channels[2])),
                ("bn3", last_bn),
            ]
        self.convs = nn.Sequential(OrderedDict(layers))
        if stride != 1 or in_channels != channels[-1]:
            self.proj_conv = conv1x1(in_channels, channels[-1], stride=stride)
            self.proj_bn = norm_act(channels[-1], activation="identity")
        self.out_channels = channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.proj_bn(self.proj_conv(x)) if hasattr(self, "proj_conv") else x
        *body, last_bn = self.convs
        out = x
        for layer in body:
            out = layer(out)
        if self.fuse_residual:
            return last_bn(out, shortcut)
        return activate_(last_bn(out) + shortcut, self.activation, self.activation_param)


def init_conv_weights(model: nn.Module, activation: str, activation_param: float) -> None:
    """Xavier-normal convolutions with the gain of the network's activation (the authors' default initialisation)."""
    if activation == "leaky_relu":
        gain = nn.init.calculate_gain("leaky_relu", activation_param)
    elif activation in ("relu", "elu"):
        gain = nn.init.calculate_gain("relu")
    else:
        gain = 1.0
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.xavier_normal_(module.weight, gain)


def input_stem(norm_act: NormAct, width: int, *, input_3x3: bool, memory_efficient: bool) -> nn.Sequential:
    """`mod1` of ResNeXt and DenseNet: conv1 7x7/2, or conv1 3x3/2 + bn1 + conv2 + bn2 + conv3 with `input_3x3`;
    then the 3x3/2 max pooling `pool`."""
    if input_3x3:
        layers = [
            ("conv1", nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False)),
            ("bn1", norm_act(width)),
            ("conv2", nn.Conv2d(width, width, 3, padding=1, bias=False)),
            ("bn2", norm_act(width)),
            ("conv3", nn.Conv2d(width, width, 3, padding=1, bias=False)),
        ]
    else:
        layers = [("conv1", nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False))]
    layers.append(("pool", max_pool(memory_efficient)))
    return nn.Sequential(OrderedDict(layers))


OUTPUT_STRIDES = (8, 16, 32)
FULL_STRIDE = 32  # the output stride of every family undilated


def check_output_stride(output_stride: object, allowed: Sequence[int] = OUTPUT_STRIDES) -> int:
    """Validate an output stride (input size / final feature map size)."""
    if not isinstance(output_stride, int) or isinstance(output_stride, bool) or output_stride not in allowed:
        raise InvalidArgumentError(f"output_stride must be one of {', '.join(map(str, allowed))}, "
                                   f"got {output_stride!r}")
    return output_stride


def stage_dilations(output_stride: int, downsamples: Sequence[bool]) -> tuple[int, ...]:
    """Per stage dilation that brings a network whose stages halve the resolution where `downsamples` says (ending
    at stride 32) to `output_stride`: the last halvings become dilations, doubling at each, and later stages keep
    the dilation reached (DeepLabV3's layout: stride 8 dilates the last two down-sampling stages by 2 and 4)."""
    stride, dilation, dilations = FULL_STRIDE // 2 ** sum(downsamples), 1, []
    for downsample in downsamples:
        if downsample and stride * 2 > output_stride:
            dilation *= 2
        elif downsample:
            stride *= 2
        dilations.append(dilation)
    return tuple(dilations)


def strided_options(network_class: Callable[..., nn.Module], output_stride: int, options: dict) -> dict:
    """`options` with the `dilation` that gives `output_stride` (the class lists which stages down-sample in
    `stage_downsamples`); an explicit dilation as well is a contradiction."""
    if check_output_stride(output_stride) == FULL_STRIDE:
        return options
    dilation = options.get("dilation", 1)
    if dilation is not False and (isinstance(dilation, bool) or dilation != 1):
        raise InvalidArgumentError(f"give output_stride={output_stride} or dilation={options['dilation']!r}, "
                                   "not both: output_stride sets the dilations")
    return {**options, "dilation": stage_dilations(output_stride, network_class.stage_downsamples)}


def build_family(network_class: Callable[..., nn.Module], structure: Sequence[int], *, bn_mode: str, activation: str,
                 activation_param: float, backend: str | None, memory_efficient: bool | None,
                 output_stride: int = FULL_STRIDE, **options) -> nn.Module:
    """A family's network of `structure` with its norm-act layers and the authors' convolution init;
    `memory_efficient=None` turns the family's memory tricks on for the in-place modes and off for standard BN;
    `output_stride` 8 or 16 dilates the last stages instead of down-sampling (for dense prediction)."""
    options = strided_options(network_class, output_stride, options)
    norm_act = make_norm_act(bn_mode, activation, activation_param, backend=backend)
    if memory_efficient is None:
        memory_efficient = bn_mode in ("inplace", "sync")
    model = network_class(structure, norm_act, memory_efficient=memory_efficient, **options)
    init_conv_weights(model, norm_act.activation, norm_act.activation_param)
    return model
