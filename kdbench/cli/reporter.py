"""The rich progress bars of the command line (the core reports through a plain Protocol)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from kdbench.core.progress import Advance, Level


class RichReporter:
    """One rich progress bar per stage, with the latest loss beside it."""

    def __init__(self, console: Console) -> None:
        self.console = console

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.console, transient=False) as progress:
            task_id = progress.add_task(description, total=total, info="")

            def advance(n: int = 1, **fields: object) -> None:
                info = " ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
                progress.update(task_id, advance=n, info=info)

            yield advance

    def log(self, message: str, level: Level = "info") -> None:
        prefix = {"warning": "[yellow]warning[/]: ", "error": "[red]error[/]: "}.get(level, "")
        self.console.print(prefix + escape(message), highlight=False)
