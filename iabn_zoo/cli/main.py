"""The `iabn-zoo` entry point: build the parser from the command modules, run one command, map its errors to the
exit codes of `exit_codes`."""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence

from ..errors import ZooError
from .exit_codes import EXIT_INTERNAL, EXIT_INTERRUPTED, exit_code

# Each module of this package (iabn_zoo/cli) defines `register(subparsers)` for the sub-commands of one concern.
COMMAND_MODULES = ("models", "weights", "predict", "segment", "train", "memory", "export")



def build_parser() -> argparse.ArgumentParser:
    """The parser with every sub-command of every command module."""
    parser = argparse.ArgumentParser(prog="iabn-zoo", description="InPlace-ABN model zoo")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(subparsers)
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
        return exit_code(error)
    except KeyboardInterrupt:
        print("iabn-zoo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # a bug, not a user error: say so, keep the traceback behind --debug
        if args.debug:
            traceback.print_exc()
        print(f"iabn-zoo: internal error: {type(error).__name__}: {error} (rerun with --debug and report it)",
              file=sys.stderr)
        return EXIT_INTERNAL
