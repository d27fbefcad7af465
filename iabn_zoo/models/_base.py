"""What every zoo network shares: the classifier head, its reset, the stage outputs (`features_only`,
`forward_intermediates`) and gradient checkpointing.

Families subclass `ZooNet`, build their modules in the authors' order (state_dict keys depend on it), record one
`FeatureInfo` per stage and describe their forward as stages of blocks (`stage_blocks`); the rest is here.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import InvalidArgumentError
from ._checkpoint import Block, run_blocks
from ._fast_eval import sync_fast_eval


@dataclass(frozen=True)
class FeatureInfo:
    """One stage's output: the module that makes it, its channels and its stride relative to the input."""

    module: str
    channels: int
    stride: int


class GlobalAvgPool2d(nn.Module):
    """Global average pooling to a (N, C) tensor, the first step of the authors' `classifier`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def feature_take_indices(num_stages: int, indices: int | list[int] | tuple[int, ...] | None) -> list[int]:
    """Stage indices to return, in stage order, as timm reads them: None = all, n = the last n, a list = those
    stages (negative ones count from the end)."""
    if indices is None:
        return list(range(num_stages))
    if isinstance(indices, int) and not isinstance(indices, bool):
        if not 0 < indices <= num_stages:
            raise InvalidArgumentError(f"indices={indices} asks for the last {indices} stages of {num_stages}; "
                                       f"give 1..{num_stages}, a list of stage indices, or None for all")
        return list(range(num_stages - indices, num_stages))
    if not isinstance(indices, (list, tuple)) or not indices or not all(
            isinstance(i, int) and not isinstance(i, bool) and -num_stages <= i < num_stages for i in indices):
        raise InvalidArgumentError(f"indices must be None, an int in 1..{num_stages} or a non-empty list of stage "
                                   f"indices in {-num_stages}..{num_stages - 1}, got {indices!r}")
    return sorted({i % num_stages for i in indices})


def check_num_classes(num_classes: int) -> int:
    """Validate a classifier size: 0 means no classifier."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
        raise InvalidArgumentError(f"num_classes must be an integer >= 0 (0: no classifier), got {num_classes!r}")
    return num_classes


class ZooModule(nn.Module):
    """Base of every zoo network. `eval()` switches to the fast inference path of `_fast_eval` (same function, same
    parameters) and `train()` back to the memory-saving layers (`disable_fast_eval(model)` opts out); a family
    says how its classifier is built (`make_classifier`) and found (`get_classifier`), the reset is shared; it
    describes its forward as stages of blocks (`stage_blocks`), from which come `forward_features`, the stage maps
    (`forward_intermediates`) and gradient checkpointing."""

    grad_checkpointing: bool = False

    def train(self, mode: bool = True) -> ZooModule:
        super().train(mode)
        sync_fast_eval(self)
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward instead of keeping them (less memory, about one more
        forward of time); running statistics still move once per step. Applies to nested zoo networks too."""
        for module in self.modules():
            if isinstance(module, ZooModule):
                module.grad_checkpointing = bool(enable)

    def stage_blocks(self) -> list[list[Block]]:
        """The forward up to the final feature map, as one list of blocks per stage (per `feature_info` entry)."""
        raise NotImplementedError

    def check_input(self, x: torch.Tensor) -> None:
        """Reject inputs the network cannot take, with a readable message."""
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final feature map, before pooling and classifier."""
        return run_blocks([block for stage in self.stage_blocks() for block in stage], x, self.grad_checkpointing)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every stage, in order (the last one is what `forward_features` returns)."""
        return self.forward_intermediates(x, intermediates_only=True)

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | tuple[int, ...] | None = None,
                              intermediates_only: bool = False) -> list[torch.Tensor] | tuple[torch.Tensor,
                                                                                             list[torch.Tensor]]:
        """timm's: (final feature map as `forward_features` gives it, [stage maps as `features_only=True`]), or
        only the list with `intermediates_only` (which stops after the last stage asked for). `indices`: None =
        every stage, n = the last n, a list = those stage indices."""
        self.check_input(x)
        stages = self.stage_blocks()
        take = feature_take_indices(len(stages), indices)
        last = take[-1] if intermediates_only else len(stages) - 1
        maps = []
        for index, blocks in enumerate(stages[:last + 1]):
            x = run_blocks(blocks, x, self.grad_checkpointing)
            if index in take:  # a copy where the next stage starts by writing over its input
                maps.append(x.clone() if index < last and stages[index + 1][0].writes_input else x)
        return maps if intermediates_only else (x, maps)

    def make_classifier(self, num_classes: int) -> None:
        """(Re)build the classifier for `num_classes` outputs; 0 removes it."""
        raise NotImplementedError

    def get_classifier(self) -> nn.Module:
        """The final classifying layer, or `nn.Identity()` when there is none."""
        raise NotImplementedError

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a freshly initialised one with `num_classes` outputs (0: none), on the device
        and in the dtype of the rest of the network."""
        reference = next(self.parameters())
        self.make_classifier(num_classes)
        self.get_classifier().to(device=reference.device, dtype=reference.dtype)


class ZooNet(ZooModule):
    """Base of the classification backbones: `classifier` = global average pool + `fc`, as in the authors' code."""

    feature_info: list[FeatureInfo]
    num_features: int
    features_only: bool = False

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from a feature map, or pooled features when the network has no classifier."""
        if hasattr(self, "classifier"):
            return self.classifier(x)
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        self.check_input(x)
        if self.features_only:
            return self.forward_stages(x)
        return self.forward_head(self.forward_features(x))

    def check_input(self, x: torch.Tensor) -> None:
        """Reject inputs whose shape or channel count the network cannot take, with a readable message."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InvalidArgumentError(
                f"{type(self).__name__} expects input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )

    @property
    def in_channels(self) -> int:
        first_conv = next(m for m in self.modules() if isinstance(m, nn.Conv2d))
        return first_conv.in_channels

    def finish_preactivation(self, bn_out: nn.Module, stride: int, *, num_classes: int, features_only: bool) -> None:
        """End a pre-activation network: `bn_out` normalises the last module's output and is the last stage's output;
        then the classifier (registered after `bn_out`, as in the authors' modules)."""
        self.bn_out = bn_out
        self.feature_info[-1] = FeatureInfo("bn_out", bn_out.num_features, stride)
        self.num_features = bn_out.num_features
        self.features_only = features_only
        self.make_classifier(num_classes)

    def make_classifier(self, num_classes: int) -> None:
        """(Re)build `classifier` (avg_pool + fc) for `num_classes` outputs; 0 removes it."""
        num_classes = check_num_classes(num_classes)
        if hasattr(self, "classifier"):
            del self.classifier
        if num_classes > 0 and not self.features_only:
            self.classifier = nn.Sequential(
                OrderedDict([("avg_pool", GlobalAvgPool2d()), ("fc", nn.Linear(self.num_features, num_classes))])
            )
        self.num_classes = num_classes if not self.features_only else 0

    def get_classifier(self) -> nn.Module:
        """The final linear layer, or `nn.Identity()` when there is none."""
        return self.classifier.fc if hasattr(self, "classifier") else nn.Identity()
