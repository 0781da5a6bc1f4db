"""A tiny name -> object registry, one per plugin kind (evaluators, target formats, tokenizers).

    FORMATS = Registry("target format")

    @FORMATS.register("boxes")
    class BoxesFormat: ...

    FORMATS.get("boxes")      # -> BoxesFormat
    FORMATS.get("boxs")       # RegistryError: unknown target format 'boxs'; known: boxes, ...
    FORMATS.names()           # -> ["boxes", ...]

Registering a name twice is an error rather than a silent override: two plugins claiming one
name is always a bug, and "last import wins" makes it depend on import order.
Each registry instance documents its own contract (what is registered, how it is called) in the
module that creates it.
"""
from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import UniTokError

T = TypeVar("T")


class RegistryError(UniTokError, KeyError):
    """A lookup of an unknown name, or a second registration of a known one."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind  # what is registered, in the user's words; used in error messages
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator that does."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def add(item: T) -> T:
            if name in self._entries:
                raise RegistryError(
                    f"{self.kind} {name!r} is already registered (by {_describe(self._entries[name])}); "
                    f"refusing to replace it with {_describe(item)}"
                )
            self._entries[name] = item
            return item

        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self.names()) or "(none registered)"
            raise RegistryError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"


def _describe(obj: object) -> str:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    return f"{module}.{qualname}" if module and qualname else repr(obj)
