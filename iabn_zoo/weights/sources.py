"""Which sources a download tries, in which order: the mirrors the user names in IABN_ZOO_MIRRORS first, then the
entry's own sources; a `sources` argument (`iabn-zoo download --source`) picks and orders them for one call.

IABN_ZOO_MIRRORS holds mirror templates separated by spaces or commas, each an http(s) URL or a Hub repository
in which `{name}` and `{file_name}` stand for the entry's weights name and file name; `hf-hub:ORG` alone means
`hf-hub:ORG/{name}` (the repositories `iabn-zoo push NAME ORG/NAME` makes). Every source is verified the same way.
"""

from __future__ import annotations

import dataclasses
import os
import re

from ..errors import InvalidArgumentError, RegistryError
from .catalog import Weights
from .hf_hub.names import is_hub_name

MIRRORS_ENV = "IABN_ZOO_MIRRORS"
KINDS = {"hf-hub": True, "hub": True, "http": False, "url": False}  # kind -> whether it means Hub sources
SEPARATORS = re.compile(r"[\s,]+")


def mirror_sources(weights: Weights) -> list[str]:
    """The sources IABN_ZOO_MIRRORS gives `weights`, in order."""
    found = []
    for template in filter(None, SEPARATORS.split(os.environ.get(MIRRORS_ENV, ""))):
        if is_hub_name(template) and "/" not in template:
            template += "/{name}"
        try:
            found.append(template.format(name=weights.name, file_name=weights.file_name))
        except (KeyError, IndexError, ValueError):
            raise RegistryError(f"{MIRRORS_ENV}: {template!r} is not a mirror template; use {{name}} and "
                                "{file_name} only, e.g. hf-hub:ORG or https://mirror.example/{file_name}") from None
    return found


def ordered_sources(weights: Weights, requested: list[str] | tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The sources to try for `weights`: mirrors then the entry's own, or those `requested` picks: a source's
    position in that list (1 first), a kind (`hf-hub`, `http`), or a source of its own (a URL or a Hub name)."""
    if is_hub_name(weights.name):  # a Hub repository's entry: the repository is its one source
        if requested:
            raise InvalidArgumentError(f"{weights.name} is a Hub repository, its own only source: drop the sources")
        return weights.urls
    known = _unique([*mirror_sources(weights), *weights.urls])
    if not requested:
        return tuple(_checked(weights, known))
    picked: list[str] = []
    for item in requested:
        if item in KINDS:
            matching = [source for source in known if is_hub_name(source) == KINDS[item]]
            if not matching:
                raise InvalidArgumentError(f"{weights.name} has no {item} source; its sources: {', '.join(known)}")
            picked += matching
        elif item.isdigit():
            if not 1 <= int(item) <= len(known):
                raise InvalidArgumentError(f"{weights.name} has {len(known)} source(s), no number {item}: "
                                           + ", ".join(f"{i} {s}" for i, s in enumerate(known, 1)))
            picked.append(known[int(item) - 1])
        else:
            picked.append(item)
    return tuple(_checked(weights, _unique(picked)))


def _checked(weights: Weights, sources: list[str]) -> list[str]:
    """`sources`, each validated as the registry validates an entry's urls."""
    try:
        dataclasses.replace(weights, urls=tuple(sources))
    except RegistryError as error:
        raise InvalidArgumentError(f"sources: {error}") from None
    return sources


def _unique(sources: list[str]) -> list[str]:
    return list(dict.fromkeys(sources))
