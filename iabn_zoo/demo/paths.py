"""How the demo names the files it writes: their path when kept (--workdir), else words."""

from __future__ import annotations

from pathlib import Path


def shown(path: Path, kept: bool) -> str:
    """`path` when the demo keeps it (--workdir), else words: printing a path deleted at the end would mislead."""
    return str(path) if kept else "a temporary folder (deleted at the end; --workdir DIR keeps the files)"
