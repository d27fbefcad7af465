"""The `iabn-zoo` command line: the parser and one module per group of sub-commands, each a library call plus
printing. May import anything in the library; nothing in the library imports it."""

from .main import main

__all__ = ["main"]
