"""torch.hub entry points, generated from the registries: one per weights name (pretrained by default), one per
architecture (random initialisation by default), and `hf_hub(REPO_ID)` for a repository on the Hugging Face Hub,
each documented for `torch.hub.help`. hubconf.py exposes them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn

from .factory import create_model
from .models._registry import get_arch, list_archs
from .weights.catalog import Weights, get_weights, list_weights, weights_for_arch
from .weights.hf_hub.names import PREFIX as HF_HUB_PREFIX

HF_HUB_ENTRY = "hf_hub"

ENTRY_ARGS = """
Args:
    pretrained: {pretrained_help}
    progress: show a progress bar while downloading.
    **kwargs: passed on to `iabn_zoo.create_model` (e.g. num_classes=N for a new classifier, bn_mode, features_only).
"""


def entry_points() -> dict[str, Callable[..., nn.Module]]:
    """Every entry point by name: architectures first, then weights names (which win a clash of names), then the
    Hugging Face Hub's."""
    entries = {arch: arch_entry_point(arch) for arch in list_archs()}
    entries.update({name: weights_entry_point(get_weights(name)) for name in list_weights()})
    entries[HF_HUB_ENTRY] = hf_hub_entry_point()
    return entries


def hf_hub_entry_point() -> Callable[..., nn.Module]:
    """The entry point taking a Hugging Face Hub repository id (`ORG/NAME[@REVISION]`, `hf-hub:` optional)."""

    def entry(repo_id: str, pretrained: bool = True, progress: bool = True, **kwargs: Any) -> nn.Module:
        name = repo_id if repo_id.startswith(HF_HUB_PREFIX) else HF_HUB_PREFIX + repo_id
        return create_model(name, pretrained=pretrained, progress=progress, **kwargs)

    doc = ("A network published on the Hugging Face Hub by `iabn-zoo push` (a fine-tuning run, or a mirror of a "
           "published checkpoint), built from its config.json and loaded from its model.safetensors through the "
           "Hugging Face cache (huggingface_hub, the `hub` extra; HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE apply).\n\n"
           "Args:\n    repo_id: ORG/NAME or ORG/NAME@REVISION (a branch, tag or commit).\n"
           "    pretrained: load the repository's weights (default); False gives its architecture randomly "
           "initialised.\n    progress: show a progress bar while downloading.\n"
           "    **kwargs: passed on to `iabn_zoo.create_model` (num_classes=N for a new classifier, bn_mode).\n")
    return _named(entry, HF_HUB_ENTRY, doc)


def weights_entry_point(weights: Weights) -> Callable[..., nn.Module]:
    """An entry point building `weights`' network with its published weights loaded (unless pretrained=False)."""

    def entry(pretrained: bool = True, progress: bool = True, **kwargs: Any) -> nn.Module:
        return create_model(weights.name, pretrained=pretrained, progress=progress, **kwargs)

    return _named(entry, weights.name, weights_doc(weights))


def arch_entry_point(arch: str) -> Callable[..., nn.Module]:
    """An entry point building architecture `arch`, randomly initialised unless pretrained=True."""

    def entry(pretrained: bool = False, progress: bool = True, **kwargs: Any) -> nn.Module:
        return create_model(arch, pretrained=pretrained, progress=progress, **kwargs)

    return _named(entry, arch, arch_doc(arch))


def weights_doc(weights: Weights) -> str:
    """What `torch.hub.help` shows for a weights entry: description, metrics, license, preprocessing, file."""
    options = ", ".join(f"{key}={value!r}" for key, value in weights.arch_kwargs.items())
    metrics = ", ".join(f"{key} {value:.2f}" for key, value in weights.metrics.items())
    preprocessing = ", ".join(f"{key} {value}" for key, value in weights.preprocessing.items())
    lines = [
        weights.description,
        "",
        f"Architecture: {weights.arch}({options})",
        f"Task: {weights.task}, {weights.num_classes} classes" + (f" ({weights.labels})" if weights.labels else ""),
        f"Metrics: {metrics}",
        f"License: {weights.license}",
        f"Preprocessing: {preprocessing}",
        f"Checkpoint: {weights.file_name}, md5 {weights.md5}",
    ]
    pretrained_help = "load the published weights (default); False gives the same network randomly initialised."
    return "\n".join(lines) + "\n" + ENTRY_ARGS.format(pretrained_help=pretrained_help)


def arch_doc(arch: str) -> str:
    """What `torch.hub.help` shows for an architecture entry: its constructor's summary and its published weights."""
    summary = (get_arch(arch).__doc__ or f"The {arch} architecture.").strip().splitlines()[0]
    published = weights_for_arch(arch)
    lines = [summary, "", "Randomly initialised by default."]
    if published:
        lines.append("Published weights (pretrained=True takes the best top-1): " + ", ".join(
            f"{w.name} ({', '.join(f'{k} {v:.2f}' for k, v in list(w.metrics.items())[:2])})" for w in published))
        pretrained_help = "load the best published weights of this architecture (default False)."
    else:
        lines.append("No published weights.")
        pretrained_help = "not available for this architecture (no published weights)."
    return "\n".join(lines) + "\n" + ENTRY_ARGS.format(pretrained_help=pretrained_help)


def _named(entry: Callable[..., nn.Module], name: str, doc: str) -> Callable[..., nn.Module]:
    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = doc
    entry.__module__ = "hubconf"
    return entry
