"""The thin click CLI. Subcommands live in their own modules and are imported only when invoked, so that
``kdbench list`` does not pay for importing torch. Errors become one-paragraph messages here, at the edge."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from kdbench.core.errors import EXIT_INTERRUPTED, KdbenchError
from kdbench.core.version import __version__

# name -> "module:attribute" of a click command or group
SUBCOMMANDS: dict[str, str] = {
    "run": "kdbench.cli.run:run",
    "list": "kdbench.cli.listing:list_plugins",
    "leaderboard": "kdbench.cli.leaderboard:leaderboard",
    "tasks": "kdbench.cli.tasks:tasks",
    "cache": "kdbench.cli.cache:cache",
    "bases": "kdbench.cli.bases:bases",
    "plugin": "kdbench.cli.plugin:plugin",
    "audit": "kdbench.cli.audit:audit",
    "analyze": "kdbench.cli.analyze:analyze",
    "results": "kdbench.cli.results:results",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *SUBCOMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in SUBCOMMANDS:
            module_name, attribute = SUBCOMMANDS[cmd_name].split(":")
            command = getattr(importlib.import_module(module_name), attribute)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KdbenchError as exc:
            _print_error(str(exc))
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            _print_error("Interrupted. Finished artifacts are cached; run the same command again to resume.")
            sys.exit(EXIT_INTERRUPTED)


def _print_error(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False).print(f"[bold red]Error:[/] {escape(message)}", soft_wrap=True)


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="kdbench")
def main() -> None:
    """kdbench: how much of a teacher's private data leaks into distilled students, and what defenses buy back."""
