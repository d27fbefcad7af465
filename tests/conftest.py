"""Shared fixtures: every test gets its own empty zoo cache and no user registry files; the loopback HTTP server
(`loopback_server`) is available to every test. The helpers every folder shares live in `support/`."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import support.x` from every folder

from support.loopback_server import loopback_server  # noqa: E402,F401  (fixture)

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def zoo_home(tmp_path, monkeypatch):
    """An empty IABN_ZOO_HOME for each test, so no test sees another's cache or the user's."""
    home = tmp_path / "zoo_home"
    monkeypatch.setenv("IABN_ZOO_HOME", str(home))
    monkeypatch.delenv("IABN_ZOO_OFFLINE", raising=False)
    monkeypatch.delenv("IABN_ZOO_REGISTRY", raising=False)
    monkeypatch.delenv("IABN_ZOO_BACKEND", raising=False)
    return home
