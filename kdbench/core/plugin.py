"""What plugins register: small typed Protocols the runner relies on.

Every plugin class has a ``name``, a one-line ``description`` and a ``Params`` dataclass whose fields (with
defaults) are the plugin's parameters; ``__post_init__`` validates them and raises
:class:`kdbench.core.errors.ParameterError`. The runner builds ``Params`` from the CLI (``gkd:lmbda=0.5``) and passes
the instance to the constructor, so bad parameters fail before any training starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable


@runtime_checkable
class Plugin(Protocol):
    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type]


@dataclass(frozen=True)
class NoParams:
    """For plugins without parameters."""
