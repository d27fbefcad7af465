"""Progress bars: the one rule for every long step (download, fine-tuning, evaluation, prediction, segmentation,
export): a tqdm bar on standard error when the caller allows it and standard error is a terminal, silence otherwise
(a log file or a pipe never fills with bar redraws)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

from .threads import main_thread_takes_ctrl_c


def shows_progress(enabled: bool | None = True) -> bool:
    """Whether a bar is drawn: not when the caller said no (False), else only when stderr is a terminal."""
    if enabled is False:
        return False
    stream = sys.stderr
    return stream is not None and hasattr(stream, "isatty") and stream.isatty()


def progress_bar(iterable: Iterable[Any] | None = None, *, enabled: bool | None = True, **options: Any) -> tqdm:
    """A tqdm bar over `iterable` (or one updated by hand) following `shows_progress`; `options` go to tqdm (whose
    monitor thread, started by the first bar, leaves Ctrl-C to the main thread)."""
    with main_thread_takes_ctrl_c():
        return tqdm(iterable, disable=not shows_progress(enabled), file=sys.stderr, dynamic_ncols=True, **options)


def write_line(text: str) -> None:
    """Print a line on stderr without breaking a bar being drawn there."""
    tqdm.write(text, file=sys.stderr)


def progress_bar_class(enabled: bool | None = True) -> type[tqdm]:
    """A tqdm class following `shows_progress`, for libraries that make their own bars (huggingface_hub's
    `tqdm_class`): it ignores the `disable` and `name` they pass and draws on stderr only when allowed."""
    shown = shows_progress(enabled)

    class Bar(tqdm):
        def __init__(self, *args: Any, **options: Any):
            options.pop("name", None)
            options.update(disable=not shown, file=sys.stderr, dynamic_ncols=True)
            super().__init__(*args, **options)

    return Bar
