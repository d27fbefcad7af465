"""Typed errors of iabn-zoo: one shallow hierarchy, each message says what to do next.

Catch `ZooError` for everything the package raises on purpose; the subclasses let callers react to one kind.
The command line maps each class to an exit code (iabn_zoo.cli.exit_codes).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_matches(name: str, known: Iterable[str]) -> list[str]:
    """Names from `known` that resemble `name`, best first, for error messages."""
    return difflib.get_close_matches(str(name), list(known), n=5, cutoff=0.5)


class ZooError(Exception):
    """Base class of every error iabn-zoo raises on purpose."""


class InvalidArgumentError(ZooError, ValueError):
    """An argument or option has a value outside what is allowed (bad bn_mode, negative num_classes, ...)."""


class UnknownNameError(ZooError, KeyError):
    """A model, architecture or weights name is not registered; the message lists the closest names."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        self.kind = kind
        self.name = name
        self.suggestions = close_matches(name, known)
        hint = f" Did you mean: {', '.join(self.suggestions)}?" if self.suggestions else ""
        super().__init__(f"unknown {kind} {name!r}.{hint} `iabn-zoo list` shows every name.")

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class RegistryError(ZooError, ValueError):
    """A registry file or entry is malformed; the message names the file and the field."""


class DownloadError(ZooError):
    """A file could not be fetched (network, quota page, offline mode, unwritable cache)."""


class CacheWriteError(DownloadError):
    """The cache cannot be written (disk full, permissions): no other source would help."""


class ChecksumError(DownloadError):
    """A file's md5 differs from the registry's; the partial file has been removed."""

    def __init__(self, message: str, *, expected: str = "", actual: str = "", source: str = ""):
        self.expected = expected
        self.actual = actual
        self.source = source
        super().__init__(message)


class CheckpointError(ZooError):
    """A checkpoint cannot be read safely or does not fit the architecture (keys listed)."""


class DataError(ZooError):
    """An input image or data set is missing, unreadable or inconsistent; the message names the path."""


class ExportError(ZooError):
    """A network could not be exported, or the exported file does not compute what the eager network computes
    (the message gives the difference measured after writing)."""

    def __init__(self, message: str, *, difference: float | None = None):
        self.difference = difference
        super().__init__(message)
