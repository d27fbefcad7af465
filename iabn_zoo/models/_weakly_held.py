"""Objects that a module owns and that name the module back, held weakly: a strong reference back would be a
reference cycle, which only Python's cyclic collector frees, late (large tensors do not trigger it), so a network
would outlive its last reference. With weak ones it goes by reference counting the moment its last reference does.

Copies and pickles carry the weakly held objects strongly, so that a deepcopy's memo maps them to their copies (and a
pickle stores them), and the copy holds them weakly again.
"""

from __future__ import annotations

import weakref
from typing import Any


class WeakAttribute:
    """An attribute held through a weak reference and read as the object itself (None once it is gone)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_weak_" + name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        ref = instance.__dict__.get(self.slot)
        return None if ref is None else ref()

    def __set__(self, instance: Any, value: Any) -> None:
        instance.__dict__[self.slot] = None if value is None else weakref.ref(value)


class WeaklyHeld:
    """Base of objects with WeakAttributes: those travel strongly in copies and pickles (as the plain
    attribute names) and are weak again in the copy."""

    def __getstate__(self) -> dict[str, Any]:
        """Copyable state: plain attributes as they are, weak ones as the objects they name."""
        state = {key: value for key, value in self.__dict__.items() if not key.startswith("_weak_")}
        for cls in type(self).__mro__:
            state.update({name: getattr(self, name) for name, attribute in vars(cls).items()
                          if isinstance(attribute, WeakAttribute)})
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a copy: setattr, so weak attributes become weak references (and properties their storage)."""
        for key, value in state.items():
            setattr(self, key, value)
