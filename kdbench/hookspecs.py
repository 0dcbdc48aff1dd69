"""The three hooks every kdbench plugin may implement (as in simonw/llm, the host owns ``register``).

A plugin module implements any of them with ``@kdbench.hookimpl`` and calls ``register(SomeClass)`` once per class;
the class must satisfy the matching Protocol in :mod:`kdbench.core.plugin`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("kdbench")
hookimpl = pluggy.HookimplMarker("kdbench")

Register = Callable[[type[Any]], None]


@hookspec
def register_distillers(register: Register) -> None:
    """Register distiller classes (see :class:`kdbench.distill.job.Distiller`)."""


@hookspec
def register_attacks(register: Register) -> None:
    """Register membership-inference attack classes (see :class:`kdbench.scoring.inputs.Attack`)."""


@hookspec
def register_defenses(register: Register) -> None:
    """Register defense classes (see :class:`kdbench.defense.base.Defense`)."""
