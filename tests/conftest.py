"""Shared fixtures: every test gets its own empty zoo cache and no user registry files."""

import pytest
import torch

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
