"""The `iabn-zoo` command line: a thin layer that parses, calls the library, prints, and maps errors to exit codes.

Exit codes: 0 success, 1 other zoo error, 2 bad usage or option, 3 unknown name, 4 malformed registry,
5 download failed, 6 checksum mismatch, 7 unreadable checkpoint, 8 bad image or data set,
70 internal error (a bug: run with --debug and report it), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence

from .errors import ZooError

# Each module under iabn_zoo/commands defines `register(subparsers)` for the sub-commands of one concern.
COMMAND_MODULES = ("models", "weights", "predict", "segment", "train", "memory")

EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The parser with every sub-command of every command module."""
    parser = argparse.ArgumentParser(prog="iabn-zoo", description="InPlace-ABN model zoo")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code instead of raising."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ZooError as error:
        if args.debug:
            traceback.print_exc()
        print(f"iabn-zoo: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("iabn-zoo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # a bug, not a user error: say so, keep the traceback behind --debug
        if args.debug:
            traceback.print_exc()
        print(f"iabn-zoo: internal error: {type(error).__name__}: {error} (rerun with --debug and report it)",
              file=sys.stderr)
        return EXIT_INTERNAL
