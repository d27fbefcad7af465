"""Typed errors of iabn-zoo: one shallow hierarchy, each message says what to do next.

Catch `ZooError` for everything the package raises on purpose; the subclasses let callers react to one kind.
The command line maps each class to an exit code (iabn_zoo.cli.exit_codes).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable


def close_matches(name: str, known: Iterable[str]) -> list[str]:
    """Names from `known` that resemble `name`, best first, for error messages."""
    return difflib.get_close_matches(str(name), list(known), n=5, cutoff=0.5)


class ZooError(Exception):
    """Base class of every error iabn-zoo raises on purpose.

    A message may name the caller's parameters as `{name}` placeholders, listed in `parameters`: `str(error)` writes
    the Python name (`batch_size must be ...`), and the command line writes the option instead (`--batch-size must
    be ...`) through `render`.
    """

    def __init__(self, message: str = "", *args: object, parameters: Iterable[str] = ()):
        super().__init__(message, *args)
        self.parameters = tuple(parameters)

    def render(self, spell: Callable[[str], str]) -> str:
        """The message with each `{parameter}` placeholder written as `spell(parameter)`."""
        text = str(self.args[0]) if self.args else ""
        for name in self.parameters:
            text = text.replace("{" + name + "}", spell(name))
        return text

    def __str__(self) -> str:
        return self.render(str)

    def __reduce__(self):
        """Pickle every subclass the same way (worker processes send errors back), whatever its __init__ takes."""
        return _restore_error, (type(self), self.args, self.__dict__)


def _restore_error(kind: type[ZooError], args: tuple, state: dict) -> ZooError:
    error = kind.__new__(kind)
    error.args = args
    error.__dict__.update(state)
    return error


class InvalidArgumentError(ZooError, ValueError):
    """An argument or option has a value outside what is allowed (bad bn_mode, negative num_classes, ...)."""


def bad_argument(parameter: str, problem: str) -> InvalidArgumentError:
    """An InvalidArgumentError whose message is the parameter's name followed by `problem` (which may name it again
    as `{parameter}`), e.g. `bad_argument("batch_size", "must be >= 2, got 1")`."""
    return InvalidArgumentError(f"{{{parameter}}} {problem}", parameters=(parameter,))


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


class StorageError(ZooError):
    """A file or folder cannot be written: the disk is full, the quota is spent, the file system is read-only, the
    permissions forbid it, or a file stands where a folder should be. The message names the path, the cause and
    what to do; `path` and `reason` (full, quota, read-only, permission, not-a-folder, too-large, other) say it to
    code. Raised before any work where the need is known in advance; a failed write leaves no partial file."""

    def __init__(self, message: str = "", *, path: str = "", reason: str = "other", parameters=()):
        self.path = path
        self.reason = reason
        super().__init__(message, parameters=parameters)


class HubError(DownloadError):
    """The Hugging Face Hub could not serve a file: no connection, offline mode, repository, revision or file not
    found, private or gated without a token that has access. `repo` names the repository, `reason` the cause
    (unreachable, offline, repo-not-found, revision-not-found, file-not-found, gated, unauthorized, http)."""

    def __init__(self, message: str = "", *, repo: str = "", reason: str = "http"):
        self.repo = repo
        self.reason = reason
        super().__init__(message)


class PublishError(ZooError):
    """A push to the Hugging Face Hub was refused before any file was made: no token, an invalid or read-only
    token, a repository or namespace the token cannot write; or the Hub rejected the commit. `repo` and `reason`
    (no-token, invalid-token, read-only-token, forbidden, rejected) say it to code."""

    def __init__(self, message: str = "", *, repo: str = "", reason: str = "forbidden"):
        self.repo = repo
        self.reason = reason
        super().__init__(message)


class MissingExtraError(ZooError, ImportError):
    """A feature needs an optional extra that is not installed; the message names the extra and how to install it."""

    def __init__(self, message: str = "", *, extra: str = ""):
        self.extra = extra
        super().__init__(message)


class CacheWriteError(DownloadError, StorageError):
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


class ResourceLimitError(ZooError, MemoryError):
    """The work does not fit this machine (memory of the CPU or the device): the message says how much it needs or
    where it ran out, and which sizes to lower."""



class RunPreempted(ZooError):
    """Fine-tuning stopped on SIGTERM after writing a resume point on every rank's behalf: not a failure of the run,
    which the same command continues (`--resume auto`, or a torchrun restart). Exit code 75 on the command line."""

    def __init__(self, message: str, *, run_dir: str = "", epoch: int = 0, step: int = 0, parameters=()):
        self.run_dir = run_dir
        self.epoch = epoch
        self.step = step
        super().__init__(message, parameters=parameters)
