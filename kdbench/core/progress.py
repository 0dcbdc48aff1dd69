"""How the core reports progress on long stages (training, generation, scoring) and notes for the user: a plain
Protocol. The command line implements it with rich (:mod:`kdbench.cli.reporter`); library use and tests get
:class:`NullReporter`. Messages are plain text: styling is the reporter's business."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Literal, Protocol

Advance = Callable[..., None]
Level = Literal["info", "warning", "error"]


class Reporter(Protocol):
    def task(self, description: str, total: int) -> AbstractContextManager[Advance]:
        """A context manager yielding ``advance(n=1, **fields)`` for one long piece of work."""
        ...

    def log(self, message: str, level: Level = "info") -> None:
        """A plain-text note; ``level`` "warning" or "error" for something the user should act on."""
        ...


class NullReporter:
    """Reports nothing: for library use and tests."""

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        yield lambda n=1, **fields: None

    def log(self, message: str, level: Level = "info") -> None:
        pass
