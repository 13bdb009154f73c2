"""A package's public names, imported on first use: a package `__init__` lists them without
importing its modules, so importing one module of a package never loads the rest (and never
closes an import cycle between packages)."""
from __future__ import annotations

from importlib import import_module
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """The module `__getattr__` of `package`: name -> its value from `package.<exports[name]>`."""
    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return __getattr__
