"""Old import paths of the plugin API, kept working for plugins written before ``kdbench.api`` (as the scaffold
of kdbench 0.1 generated them): a name asked of an old path is served from :mod:`kdbench.api` with a
``DeprecationWarning`` that says where to import it from. Only the paths the 0.1 docs and scaffold used."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterable
from typing import Any


def moved_to_api(old_module: str, names: Iterable[str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) serving ``names`` from ``kdbench.api``, with a deprecation warning."""
    served = frozenset(names)

    def __getattr__(name: str) -> Any:
        if name not in served:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        warnings.warn(
            f"{old_module}.{name} is deprecated: import it from kdbench.api (the stable plugin API).",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module("kdbench.api"), name)

    return __getattr__
