"""The front door: list the names the zoo knows and build a model from an architecture, a weights name, a Hub
repository (`hf-hub:ORG/NAME[@REVISION]`, whose entry is its config.json) or a fine-tuning RUN directory. Everything
above (training, tasks, deploy, the CLI) builds networks through here.
"""

from __future__ import annotations

import fnmatch
import inspect
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn

from . import __version__
from .errors import CheckpointError, InvalidArgumentError, UnknownNameError
from .layers import BN_MODES, convert_norm
from .models._registry import get_arch, is_arch, list_archs
from .models.deeplabv3 import backbone_of
from .weights.backbone import DEFAULT as DEFAULT_BACKBONE
from .weights.backbone import BackboneSource, backbone_source
from .weights.catalog import Weights, default_weights_for, get_weights, is_weights, list_weights, weights_for_arch
from .weights.hf_hub.names import is_hub_name
from .weights.loading import build_pretrained, load_checked
from .weights.run_reader import RunInfo, is_run_dir, read_run, run_state_dict


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Architecture and weights names matching the fnmatch `pattern` (case ignored); with `pretrained=True` only
    weights names and the architectures that have published weights (which stand for their default weights)."""
    weights_names = list_weights("*")
    archs_with_weights = {get_weights(name).arch for name in weights_names}
    names = set(weights_names) | (archs_with_weights if pretrained else set(list_archs()))
    wanted = pattern.lower()
    return sorted(name for name in names if fnmatch.fnmatchcase(name.lower(), wanted))


def resolve_weights(name: str) -> Weights | None:
    """The weights entry `name` refers to, None for a bare architecture; unknown names raise with suggestions."""
    if is_weights(name):
        return get_weights(name)
    if is_arch(name):
        return None
    raise UnknownNameError("model", name, list_archs() + list_weights())


def create_model(
    name: str,
    *,
    pretrained: bool | None = None,
    num_classes: int | None = None,
    bn_mode: str | None = None,
    progress: bool = True,
    backbone_weights: Any = DEFAULT_BACKBONE,
    **kwargs: Any,
) -> nn.Module:
    """Build architecture or weights `name`; `pretrained=True` downloads, verifies and loads the published weights
    (a name without any is refused), left out or False builds random weights. A fine-tuning RUN directory and a Hub
    repository (`hf-hub:ORG/NAME[@REVISION]`) mean their trained weights unless `pretrained=False` asks for a fresh
    network of their architecture.

    A `num_classes` other than the checkpoint's keeps the backbone and gives a freshly initialised classifier;
    `bn_mode` overrides the mode the weights were trained with through the exact conversions of `convert_norm`.
    `backbone_weights` (a `deeplabv3_<backbone>` network built without weights of its own): a weights name or the
    backbone's architecture name (its default weights), a classification RUN directory (its backbone), "none" /
    None (random), or "default": the backbone's default published weights, else random with a warning.
    """
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 0):
        raise InvalidArgumentError(f"num_classes must be an integer >= 0, got {num_classes!r}")
    if bn_mode is not None and bn_mode not in BN_MODES:
        raise InvalidArgumentError(f"bn_mode must be one of {', '.join(BN_MODES)}, got {bn_mode!r}")
    if not is_arch(name) and not is_weights(name) and is_run_dir(name):  # a fine-tuning RUN directory
        _check_no_backbone_weights(name, backbone_weights)
        return _create_from_run(name, pretrained=pretrained is not False, num_classes=num_classes, bn_mode=bn_mode)
    weights = resolve_weights(name)
    if weights is not None and is_hub_name(weights.name):
        _check_hub_architecture(weights)
        pretrained = pretrained is not False
    if weights is None and pretrained:
        _check_has_weights(name)
        weights = default_weights_for(name)
    if weights is not None and pretrained:
        _check_no_backbone_weights(name, backbone_weights)
        return _build_pretrained(weights, bn_mode=bn_mode, num_classes=num_classes, progress=progress, **kwargs)
    arch, arch_kwargs = (name, {}) if weights is None else (weights.arch, weights.arch_kwargs)
    backbone = backbone_of(arch)
    if backbone is None:
        _check_no_backbone_weights(name, backbone_weights)
        with _constructor_refusals(weights):
            return _build(arch, arch_kwargs, bn_mode=bn_mode, num_classes=num_classes, **kwargs)
    with _constructor_refusals(weights):
        return build_with_backbone(arch, arch_kwargs, backbone_source(backbone, backbone_weights), bn_mode=bn_mode,
                                   num_classes=num_classes, progress=progress, **kwargs)


def _check_hub_architecture(weights: Weights) -> None:
    """A Hub repository's config.json must name an architecture of this version, with arguments its constructor
    takes: said before any weights file is fetched."""
    if not is_arch(weights.arch):
        raise CheckpointError(f"{weights.name}: config.json names architecture {weights.arch!r}, which iabn-zoo "
                              f"{__version__} does not have; upgrade iabn-zoo (pip install --upgrade iabn-zoo), or "
                              "check the repository")
    options = {**weights.arch_kwargs, "num_classes": weights.num_classes}
    try:
        _check_options(weights.arch, get_arch(weights.arch), options)
    except InvalidArgumentError as error:
        raise CheckpointError(f"{weights.name}: config.json gives arguments the constructor refuses: {error}; the "
                              "repository was written for another version of iabn-zoo") from None


@contextmanager
def _constructor_refusals(weights: Weights | None) -> Iterator[None]:
    """Around building a Hub repository's network: values its constructor refuses (on the meta device, before any
    tensor is fetched) are a config this version cannot read."""
    if weights is None or not is_hub_name(weights.name):
        yield
        return
    try:
        yield
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{weights.name}: config.json gives {weights.arch} arguments its constructor refuses "
                              f"({error}); the repository was written for another version of iabn-zoo") from None


def _check_has_weights(arch: str) -> None:
    """pretrained=True on a DeepLabV3 architecture without segmentation weights: say what loads by default."""
    if backbone_of(arch) is not None and not weights_for_arch(arch):
        raise InvalidArgumentError(
            f"{arch} has no published segmentation weights; without pretrained=True its backbone starts from "
            f"{backbone_of(arch)}'s default published weights (choose others with backbone_weights=...)")


def _check_no_backbone_weights(name: str, backbone_weights: Any) -> None:
    """backbone_weights only initialises a fresh deeplabv3 network: anywhere else it would be silently ignored."""
    if backbone_weights not in (DEFAULT_BACKBONE, None, "none"):
        raise InvalidArgumentError(
            f"backbone_weights={str(backbone_weights)!r} does not apply to {name}: it initialises the backbone of a "
            "deeplabv3_<backbone> network built without weights of its own (not a weights name loaded with "
            "pretrained=True, a RUN directory, or a classification network)")


def build_with_backbone(arch: str, arch_kwargs: dict[str, Any], source: BackboneSource | None, *,
                        bn_mode: str | None, num_classes: int | None, progress: bool = True, **kwargs: Any):
    """DeepLabV3 architecture `arch` with its `body` loaded strictly from `source` (random when None): built with
    the source's norm mode, activation and backbone options, then converted exactly to `bn_mode` if it differs."""
    if source is None:
        return _build(arch, arch_kwargs, bn_mode=bn_mode, num_classes=num_classes, **kwargs)
    wanted = bn_mode or {**arch_kwargs, **kwargs}.get("bn_mode", "inplace")
    model = _build(arch, arch_kwargs, bn_mode=source.bn_mode, num_classes=num_classes,
                   **_source_options(source, kwargs))
    load_checked(model.body, source.read(progress), source=source.name)
    return convert_norm(model, wanted) if wanted != source.bn_mode else model


def _build(arch: str, arch_kwargs: dict[str, Any], *, bn_mode: str | None, num_classes: int | None, **kwargs: Any):
    options = {**arch_kwargs, **kwargs}
    if bn_mode is not None:
        options["bn_mode"] = bn_mode
    if num_classes is not None:
        options["num_classes"] = num_classes
    constructor = get_arch(arch)
    _check_options(arch, constructor, options)
    return constructor(**options)


def _check_options(arch: str, constructor: Any, options: dict[str, Any]) -> None:
    """Reject keyword arguments the architecture does not take, naming them and the ones it does."""
    parameters = inspect.signature(constructor).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise InvalidArgumentError(
            f"{arch} takes no argument {', '.join(map(repr, unknown))}; it takes {', '.join(parameters)}"
        )


def _build_pretrained(weights: Weights, *, bn_mode: str | None, num_classes: int | None, progress: bool, **kwargs):
    list_archs()  # import the family modules before building on the meta device
    trained_mode = weights.arch_kwargs.get("bn_mode", "inplace")
    load_mode = "inplace" if trained_mode == "sync" else trained_mode
    with _constructor_refusals(weights):
        model = build_pretrained(lambda: _build(weights.arch, weights.arch_kwargs, bn_mode=load_mode,
                                                num_classes=weights.num_classes, **kwargs), weights, progress=progress)
    if num_classes is not None and num_classes != weights.num_classes:
        model.reset_classifier(num_classes)
    if bn_mode is not None and bn_mode != load_mode:
        model = convert_norm(model, bn_mode)
    return model


def _source_options(source: BackboneSource, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Build options that make the backbone take `source`'s tensors: its activation and architecture options."""
    return {**source.activation, **kwargs,
            "backbone_kwargs": {**source.backbone_kwargs, **(kwargs.get("backbone_kwargs") or {})}}


def backbone_options(arch: str, backbone_weights: Any = DEFAULT_BACKBONE) -> dict[str, Any]:
    """The build options `backbone_weights` bring to architecture `arch` (the activation and `backbone_kwargs` the
    backbone needs to take them; {} for other architectures or random weights): what a run's `arch_kwargs` records
    to rebuild the network without them. Reads and downloads nothing, warns nothing."""
    backbone = backbone_of(arch)
    if backbone is None:
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source = backbone_source(backbone, backbone_weights)
    return _source_options(source, {}) if source is not None else {}


def build_run_model(info: RunInfo, bn_mode: str | None = None) -> nn.Module:
    """A run's network freshly initialised, in the norm mode it was trained with (or `bn_mode`)."""
    options = {k: v for k, v in info.arch_kwargs.items() if k not in ("bn_mode", "num_classes")}
    if backbone_of(info.arch) is not None:  # a segmentation run: its weights replace any backbone weights
        options["backbone_weights"] = None
    return create_model(info.arch, num_classes=info.num_classes, bn_mode=bn_mode or info.bn_mode, **options)


def load_run(run_dir: str | os.PathLike[str], *, bn_mode: str | None = None) -> nn.Module:
    """The fine-tuned network of `run_dir` with its latest weights, in eval mode; `model.classes` names its outputs.

    `bn_mode` converts the norm layers exactly after loading (e.g. "standard" for plain BatchNorm inference)."""
    info = read_run(run_dir)
    model = build_run_model(info)
    try:
        model.load_state_dict(run_state_dict(info), strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{info.run_dir} does not fit {info.arch}: {error}") from None
    if bn_mode is not None and bn_mode != info.bn_mode:
        model = convert_norm(model, bn_mode)
    model.classes = list(info.classes)
    return model.eval()


def _create_from_run(run_dir: str | os.PathLike[str], *, pretrained: bool, num_classes: int | None,
                     bn_mode: str | None) -> nn.Module:
    """`create_model(RUN_DIR, ...)`: the run's network with its trained weights (or fresh ones with
    pretrained=False), a new classifier when `num_classes` differs, norm layers converted to `bn_mode`."""
    info = read_run(run_dir)
    model = load_run(run_dir, bn_mode=bn_mode).train() if pretrained else build_run_model(info, bn_mode)
    if num_classes is not None and num_classes != info.num_classes:
        model.reset_classifier(num_classes)
    return model


def count_parameters(name: str) -> int:
    """Parameters of the network `name` builds, counted on the meta device (nothing allocated or initialised)."""
    list_archs()  # import the family modules outside the meta context
    options = backbone_options(name) if is_arch(name) else {}  # as its default backbone weights shape it
    with torch.device("meta"):
        model = create_model(name, pretrained=False, backbone_weights=None, **options)
    return sum(parameter.numel() for parameter in model.parameters())
