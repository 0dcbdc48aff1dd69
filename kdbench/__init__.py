"""kdbench: how much of a teacher's private training data leaks into the students distilled from it.

Plugin authors import from :mod:`kdbench.api` (its names are also reachable here, loaded on first use, so that
``import kdbench`` stays cheap).
"""

from __future__ import annotations

from typing import Any

from kdbench.core.version import __version__
from kdbench.hookspecs import hookimpl

__all__ = ["__version__", "hookimpl"]


def __getattr__(name: str) -> Any:  # PEP 562: the public API, imported only when asked for
    import importlib

    if name == "results":  # kdbench.results.load(...) after a bare `import kdbench`
        return importlib.import_module("kdbench.results")
    api = importlib.import_module("kdbench.api")
    if name in api.__all__:
        return getattr(api, name)
    raise AttributeError(f"module 'kdbench' has no attribute {name!r}")
