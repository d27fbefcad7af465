"""Helpers of the reliability suite: registry tables for child processes, polling with a deadline, hashes."""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

PYTHON = sys.executable


def registry_entry(name: str, url: str, payload_md5: str, file_name: str, *, arch: str = "resnet18",
                   num_classes: int = 10) -> str:
    """One registry table in the shipped schema, for an IABN_ZOO_REGISTRY file."""
    return (f'[{name}]\narch = "{arch}"\narch_kwargs = {{ bn_mode = "inplace", activation = "leaky_relu", '
            f'activation_param = 0.01 }}\nurls = ["{url}"]\nmd5 = "{payload_md5}"\nfile_name = "{file_name}"\n'
            f'task = "classification"\nnum_classes = {num_classes}\nmetrics = {{}}\nlicense = "test"\n'
            'preprocessing = {}\ndescription = "served from loopback for the reliability suite"\n')


def md5_of_file(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.005) -> None:
    """Poll `condition` until it holds; fail the test naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(interval)

