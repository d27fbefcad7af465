"""Architecture registry: family modules register their constructors by name, with the task each network is
trained for ("classification" or "segmentation": registry metadata, so nobody builds a network to learn it); the
front door looks them up.

Family modules are imported on the first query only, so `import iabn_zoo` stays cheap.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable
from typing import Any

import torch.nn as nn

from ..errors import RegistryError, UnknownNameError

ArchFn = Callable[..., nn.Module]

# Modules whose import registers architectures; each holds one family.
FAMILY_MODULES = ("resnext", "wider_resnet", "resnet", "densenet", "deeplabv3")
TASKS = ("classification", "segmentation")

_ARCHS: dict[str, ArchFn] = {}
_ARCH_TASKS: dict[str, str] = {}
_loaded = False


def register_arch(fn: ArchFn | None = None, *, task: str = "classification") -> Any:
    """Register `fn` under its function name as an architecture constructor of networks trained for `task`; as a
    decorator, `@register_arch` or `@register_arch(task="segmentation")`."""
    if fn is None:
        return lambda function: register_arch(function, task=task)
    if task not in TASKS:
        raise RegistryError(f"architecture {fn.__name__!r}: task must be one of {', '.join(TASKS)}, got {task!r}")
    if fn.__name__ in _ARCHS and _ARCHS[fn.__name__] is not fn:
        raise RegistryError(f"architecture {fn.__name__!r} is registered twice; give the constructor another name")
    _ARCHS[fn.__name__] = fn
    _ARCH_TASKS[fn.__name__] = task
    return fn


def unregister_arch(name: str) -> None:
    """Remove an architecture registered with `register_arch` (e.g. a test's miniature network)."""
    if name not in _ARCHS:
        raise UnknownNameError("architecture", name, _ARCHS)
    del _ARCHS[name]
    del _ARCH_TASKS[name]


def _load_families() -> None:
    global _loaded
    if not _loaded:
        for module in FAMILY_MODULES:
            importlib.import_module(f"{__package__}.{module}")
        _loaded = True


def list_archs(pattern: str = "*") -> list[str]:
    """Sorted architecture names matching an fnmatch pattern."""
    _load_families()
    return sorted(name for name in _ARCHS if fnmatch.fnmatch(name, pattern))


def get_arch(name: str) -> ArchFn:
    """The constructor registered as `name`; `UnknownNameError` (a KeyError) with close matches otherwise."""
    _load_families()
    try:
        return _ARCHS[name]
    except KeyError:
        raise UnknownNameError("architecture", name, _ARCHS) from None


def registered_from(modules: tuple[str, ...]) -> list[str]:
    """Sorted names of the architectures registered so far whose constructors live in `modules` (module names)."""
    return sorted(name for name, fn in _ARCHS.items() if fn.__module__ in modules)


def arch_task(name: str) -> str:
    """The task the networks of architecture `name` are trained for, as it was registered."""
    get_arch(name)  # unknown names raise with suggestions
    return _ARCH_TASKS[name]


def is_arch(name: str) -> bool:
    """Whether `name` is a registered architecture."""
    _load_families()
    return name in _ARCHS
