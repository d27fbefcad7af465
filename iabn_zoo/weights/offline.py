"""IABN_ZOO_OFFLINE, the package's own offline switch: no source, Drive or the Hugging Face Hub, is contacted; cached
files only. It lives apart from the cache so that every source (the Hub's included) can read it."""

from __future__ import annotations

import os

OFFLINE_ENV = "IABN_ZOO_OFFLINE"


def is_offline() -> bool:
    """Whether IABN_ZOO_OFFLINE asks never to open a network connection."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")
