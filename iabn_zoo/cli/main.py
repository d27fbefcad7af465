"""The `iabn-zoo` entry point: build the parser from the command modules, run one command, map its errors to the
exit codes of `exit_codes`, with messages that name this command's options."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
import warnings
from collections.abc import Sequence

from .. import __version__
from ..errors import RunPreempted, ZooError
from ..system.distributed import job_place, lost_peer
from ..system.resources import out_of_memory_guard
from ..system.storage import is_storage_failure, os_error_of, storage_error
from ..system.temporary import remove_torch_cache_made_here
from .exit_codes import EXIT_INTERNAL, EXIT_INTERRUPTED, exit_code
from .options import HelpFormatter, add_shared_flags, merge_global_flags, spell_option

# Each module of this package (iabn_zoo/cli) defines `register(subparsers)` for the sub-commands of one concern.
COMMAND_MODULES = ("models", "weights", "predict", "segment", "train", "memory", "export", "push")
# Parameters that shrink the memory a command needs, named by an out-of-memory the command's own guards missed.
SIZE_PARAMETERS = ("batch_size", "image_size", "long_side", "scales")


def build_parser() -> argparse.ArgumentParser:
    """The parser with every sub-command of every command module."""
    parser = argparse.ArgumentParser(
        prog="iabn-zoo", formatter_class=HelpFormatter,
        description="The InPlace-ABN model zoo: the paper's networks, their verified checkpoints, fine-tuning, "
                    "evaluation, prediction and segmentation. `iabn-zoo COMMAND --help` describes each command.")
    parser.add_argument("--version", action="version", version=f"iabn-zoo {__version__}")
    add_shared_flags(parser, dest_prefix="global_")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").register(subparsers)
    return parser


def show_warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each, without the Python file, line and source that `warnings` shows by default; under
    torchrun once, by rank 0 (every rank says the same), except what only one rank can know (SampleWarning)."""
    if os.environ.get("RANK", "0") != "0":
        from ..data.folders import SampleWarning

        if not issubclass(category, SampleWarning):
            return
    text = " ".join(str(message).split())
    print(f"iabn-zoo: warning: {text}", file=sys.stderr if file is None else file)


def without_worker_traceback(message: str) -> str:
    """The original message of an error a DataLoader worker raised (torch re-raises it with the worker's traceback
    as its text), or `message` itself."""
    if "\nOriginal Traceback" not in message:
        return message
    last = [line for line in message.splitlines() if line.strip()][-1]
    return last.split(": ", 1)[1] if last.startswith("iabn_zoo.errors.") else last


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code instead of raising."""
    remove_torch_cache_made_here()
    parser = build_parser()
    args = merge_global_flags(parser.parse_args(argv))
    command_parser = getattr(args, "command_parser", parser)
    with warnings.catch_warnings():
        if not args.debug:
            warnings.showwarning = show_warning_line
        try:
            lower = [name for name in SIZE_PARAMETERS if spell_option(command_parser, name) != name]
            with out_of_memory_guard(f"running `{args.command}`", lower or ["the sizes of the input"]):
                return int(args.func(args) or 0)
        except ZooError as error:
            if args.debug:
                traceback.print_exc()
            message = error.render(lambda name: spell_option(command_parser, name))
            report_error(message if args.debug else without_worker_traceback(message), error)
            return exit_code(error)
        except KeyboardInterrupt:
            print("iabn-zoo: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except BrokenPipeError:  # the reader went away (`iabn-zoo list | head`): the command itself succeeded
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except Exception as error:
            peer = lost_peer(error)
            if peer is not None:  # another process of the torchrun job is gone: its log has the cause
                if args.debug:
                    traceback.print_exc()
                report_error(str(peer), peer)
                return exit_code(peer)
            if not is_storage_failure(error):  # a bug, not a user error: say so, keep the traceback behind --debug
                return internal_error(error, args.debug)
            if args.debug:  # a write the library did not guard: still the user's disk, not a bug
                traceback.print_exc()
            cause = os_error_of(error)
            failure = storage_error(cause, getattr(cause, "filename", None) or getattr(error, "filename", None)
                                    or "an output file")
            print(f"iabn-zoo: error: {failure}", file=sys.stderr)
            return exit_code(failure)


def report_error(message: str, error: ZooError) -> None:
    """Print an error; under torchrun naming the rank and node that met it, and a stop on SIGTERM (the same on every
    rank) only once, by rank 0."""
    place = job_place()
    if not place.distributed:
        print(f"iabn-zoo: error: {message}", file=sys.stderr)
    elif place.rank == 0 or not isinstance(error, RunPreempted):
        print(f"iabn-zoo: error: [{place.describe()}] {message}", file=sys.stderr)


def internal_error(error: Exception, debug: bool) -> int:
    """Report a bug: say so, keep the traceback behind --debug."""
    if debug:
        traceback.print_exc()
    place = job_place()
    where = f"[{place.describe()}] " if place.distributed else ""
    print(f"iabn-zoo: internal error: {where}{type(error).__name__}: {error} (rerun with --debug and report it)",
          file=sys.stderr)
    return EXIT_INTERNAL
