"""A package's re-exported names, imported on first use (PEP 562 module ``__getattr__``), so
that importing the package costs nothing until a name is read: ``snnet train --help`` and
``snnet serve --help`` import no torch, and a server reads ``snnet.data.config`` without it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(
    package: str, public: Mapping[str, Sequence[str]], namespace: dict[str, Any]
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``__all__``, ``__getattr__`` and ``__dir__`` for ``package``, whose ``public`` maps each
    module to the names the package re-exports from it. A name read once is kept in
    ``namespace`` (the package's ``globals()``), so later reads are plain lookups.

    Example:
        >>> __all__, __getattr__, __dir__ = lazy_exports(__name__, _PUBLIC, globals())
    """
    module_of = {name: module for module, names in public.items() for name in names}
    names = sorted(module_of)

    def getattr_(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_of[name]), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted({*namespace, *names})

    return names, getattr_, dir_
