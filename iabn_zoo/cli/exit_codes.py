"""The command line's exit codes, one per kind of error (the table lives here, with the CLI, not in the library).

Exit codes: 0 success, 1 other zoo error, 2 bad usage or option, 3 unknown name, 4 malformed registry,
5 download failed, 6 checksum mismatch, 7 unreadable checkpoint, 8 bad image or data set, 9 export failed or
differs from the eager network, 10 resource limit (out of memory: lower the sizes the message names),
11 storage error (no space or quota left or an output path that cannot be written: see the message),
12 push to the Hugging Face Hub refused (no token, or a token that cannot write there),
75 fine-tuning stopped by SIGTERM after writing a resume point (the same command with `--resume auto` continues),
70 internal error (a bug: run with --debug and report it), 130 interrupted.
"""

from __future__ import annotations

from ..errors import (
    CheckpointError,
    ChecksumError,
    DataError,
    DownloadError,
    ExportError,
    InvalidArgumentError,
    PublishError,
    RegistryError,
    ResourceLimitError,
    RunPreempted,
    StorageError,
    UnknownNameError,
    ZooError,
)

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130
EXIT_PREEMPTED = 75  # sysexits' EX_TEMPFAIL: a temporary condition, try again

# Most specific class first: the first entry an error is an instance of gives its code.
ERROR_CODES: tuple[tuple[type[ZooError], int], ...] = (
    (ChecksumError, 6),
    (StorageError, 11),
    (DownloadError, 5),
    (InvalidArgumentError, EXIT_USAGE),
    (UnknownNameError, 3),
    (RegistryError, 4),
    (CheckpointError, 7),
    (DataError, 8),
    (ExportError, 9),
    (ResourceLimitError, 10),
    (PublishError, 12),
    (RunPreempted, EXIT_PREEMPTED),
    (ZooError, 1),
)


def exit_code(error: ZooError | type[ZooError]) -> int:
    """The exit code of an error (or error class) the library raised on purpose."""
    kind = error if isinstance(error, type) else type(error)
    return next(code for cls, code in ERROR_CODES if issubclass(kind, cls))
