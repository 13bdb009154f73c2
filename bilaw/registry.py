"""Name -> factory registries with did-you-mean errors.

Every user-facing choice (dataset, model, norm, margin input, weighting, objective, method) is a
short name looked up in one of these. An unknown name raises `UnknownNameError` listing the valid
names and the closest match, so a typo in a YAML file or on the command line is obvious.
"""
from __future__ import annotations

import difflib
from types import MappingProxyType
from typing import Any, Callable, Generic, Iterable, Mapping, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """An unknown registry name; the message lists the valid names and the closest match."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


def unknown_name_message(kind: str, name: object, valid: Iterable[str]) -> str:
    """The one wording for an unknown name: the bad value, the allowed ones, the closest."""
    valid = sorted(valid)
    msg = f"unknown {kind} {name!r}; valid {kind}s: {', '.join(valid)}"
    close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.5)
    if close:
        msg += f" (did you mean {close[0]!r}?)"
    return msg


class Registry(Generic[T]):
    """A plain dict from name to factory, filled with `@registry.register("name", **facts)`.

    The facts are what the rest of the code needs to know about a name without building it (a
    dataset's default budget per norm, a model's GPU share, a weighting's burn-in): they are
    given once, at the registration, and read with `facts(name)`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._facts: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **facts: Any) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            self._facts[name] = dict(facts)
            return obj

        return add

    def facts(self, name: str) -> Mapping[str, Any]:
        """The facts registered with `name`, read-only (an unknown name is an `UnknownNameError`)."""
        self.get(name)
        return MappingProxyType(self._facts[name])

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownNameError(unknown_name_message(self.kind, name, self._entries)) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
