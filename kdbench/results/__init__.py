"""Numbers → records: the result-record schema and its validation, the per-sample files beside it, utility/risk
deltas of defended against undefended students, and results as a pandas DataFrame (``kdbench.results.load``).

``load`` and ``frame`` are imported on first use, so that reading records does not pay for importing pandas.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["frame", "load"]


def __getattr__(name: str) -> Any:  # PEP 562
    if name in __all__:
        module = importlib.import_module("kdbench.results.dataframe")

        return getattr(module, name)
    raise AttributeError(f"module 'kdbench.results' has no attribute {name!r}")
