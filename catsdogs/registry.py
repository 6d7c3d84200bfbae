"""The one registry idiom: a named dict filled by a decorator, with sorted listing and lookup."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from catsdogs.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind (models, optimizers, ...); duplicates and unknown names raise."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add`: `@REGISTRY.register("name")`."""

        def decorate(entry: T) -> T:
            return self.add(name, entry)

        return decorate

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            choices = ", ".join(self.names())
            raise UsageError(f"unknown {self.kind} {name!r}; choose one of: {choices}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
