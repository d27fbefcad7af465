"""The command line's one vocabulary: every option that several commands take is defined here once, with one name,
one default and one help text, and every sub-command is made by `add_command`, which gives it the options all
commands share (`--json`, `--debug`, `--no-progress`) and shows every default in `--help`.

Library errors name Python parameters as `{name}` placeholders; `spell_option` writes them as this command's flags.
"""

from __future__ import annotations

import argparse
from typing import Any

BATCH_SIZE = 32
DEVICE_HELP = "cpu, cuda, cuda:N, mps, or auto: CUDA when a GPU is visible, else the CPU"
NUM_WORKERS = 2


class HelpFormatter(argparse.HelpFormatter):
    """Help that ends every option taking a value with its default, unless the text already states it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shows_default = "default" in text or action.default in (None, argparse.SUPPRESS) or action.nargs == 0
        return text if shows_default else f"{text} (default: %(default)s)"


def add_command(subparsers: Any, name: str, *, help: str, description: str,
                **options: Any) -> argparse.ArgumentParser:
    """A sub-command with a description and the options every command takes."""
    parser = subparsers.add_parser(name, help=help, description=description, formatter_class=HelpFormatter,
                                   **options)
    add_shared_flags(parser)
    parser.set_defaults(command_parser=parser)
    return parser


def add_shared_flags(parser: argparse.ArgumentParser, *, dest_prefix: str = "") -> None:
    """--json, --debug and --no-progress; the top-level parser keeps its own copies under `dest_prefix`, so
    `iabn-zoo --json list` and `iabn-zoo list --json` mean the same (see `merge_global_flags`)."""
    parser.add_argument("--json", action="store_true", dest=f"{dest_prefix}json",
                        help="print JSON instead of a table (default: off)")
    parser.add_argument("--debug", action="store_true", dest=f"{dest_prefix}debug",
                        help="show the full traceback of an error, and warnings with their source (default: off)")
    if not dest_prefix:
        parser.add_argument("--no-progress", action="store_true",
                            help="no progress bars (default: bars on long steps when stderr is a terminal)")


def merge_global_flags(args: argparse.Namespace) -> argparse.Namespace:
    """Fold the flags given before the sub-command into the ones given after it."""
    for flag in ("json", "debug"):
        setattr(args, flag, getattr(args, flag, False) or getattr(args, f"global_{flag}", False))
    return args


def progress_allowed(args: argparse.Namespace) -> bool:
    """Whether the command may draw bars (they still appear only at a terminal: system.progress)."""
    return not getattr(args, "no_progress", False)


def add_device(parser: argparse.ArgumentParser) -> None:
    """--device, the same on every command that runs a network, checked by system.devices.resolve_device."""
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def add_precision(parser: argparse.ArgumentParser, help: str = "weights and activations: fp32, bf16 (fast on "
                  "CPUs with AMX or AVX512-BF16; float32 outputs), fp16 (CUDA only)") -> None:
    """--precision, the same on every command that runs a network for inference or exports one."""
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32", help=help)


def add_batch_size(parser: argparse.ArgumentParser, *aliases: str, default: int | None = BATCH_SIZE,
                   help: str = "images per forward pass", type: Any = int) -> None:
    """--batch-size (plus old spellings kept as aliases); `type` parses its value (an integer by default)."""
    parser.add_argument("--batch-size", *aliases, dest="batch_size", type=type, default=default, help=help)


def add_image_size(parser: argparse.ArgumentParser, *aliases: str, default: int | None = None,
                   help: str = "square input side in pixels (default: the model's own, 224 for the published "
                               "weights)", type: Any = int) -> None:
    """--image-size (plus old spellings kept as aliases); `type` parses its value (a side by default)."""
    parser.add_argument("--image-size", *aliases, dest="image_size", type=type, default=default, help=help)


def add_pretrained(parser: argparse.ArgumentParser) -> None:
    """--pretrained/--no-pretrained: the trained weights (default; a name without any is refused), or random ones
    on purpose. The one no-weights rule, shared by every command that runs a network."""
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                        help="load the trained weights (default; a name without published weights is refused); "
                             "--no-pretrained: random weights on purpose (a RUN always has its own)")


def add_num_workers(parser: argparse.ArgumentParser, default: int | None = NUM_WORKERS) -> None:
    """--num-workers: data loading processes."""
    parser.add_argument("--num-workers", type=int, default=default,
                        help="data loading processes (0: load in this process)"
                             + ("" if default is not None else f" (default {NUM_WORKERS})"))


def add_on_error(parser: argparse.ArgumentParser, default: str | None = "skip") -> None:
    """--on-error: what unreadable images do."""
    parser.add_argument("--on-error", choices=("skip", "raise"), default=default,
                        help="unreadable images: skip them with a warning, or fail"
                             + ("" if default is not None else " (default skip)"))


def spell_option(parser: argparse.ArgumentParser, parameter: str) -> str:
    """How the command line writes a library parameter: its option (`batch_size` -> `--batch-size`, also through
    an alias such as memory's `--batch`), a positional's metavar, or the Python name when no option matches."""
    wanted = "--" + parameter.replace("_", "-")
    for action in parser._actions:
        if action.dest == parameter or wanted in action.option_strings:
            if action.option_strings:
                return action.option_strings[0]
            return str(action.metavar or action.dest.upper())
    return parameter
