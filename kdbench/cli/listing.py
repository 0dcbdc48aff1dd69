"""``kdbench list``: what plugins and tasks are installed, and who provides them."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from kdbench.core.registry import KINDS, get_registry

CHOICES = (*KINDS, "tasks")


@click.command("list")
@click.argument("kind", required=False, type=click.Choice(CHOICES))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_plugins(kind: str | None, as_json: bool) -> None:
    """List distillers, attacks, defenses and tasks (all of them when KIND is omitted)."""
    kinds = [kind] if kind else list(CHOICES)
    rows = {k: _rows(k) for k in kinds}
    if as_json:
        click.echo(json.dumps(rows if kind is None else rows[kind], indent=2))
        return
    console = Console()
    for k, entries in rows.items():
        table = Table(title=k, title_justify="left")
        for column in ("name", "description", "distribution", "version"):
            table.add_column(column, overflow="fold")
        for entry in entries:
            table.add_row(entry["name"], entry["description"], entry["distribution"], entry["version"])
        console.print(table)


def _rows(kind: str) -> list[dict[str, str]]:
    if kind == "tasks":
        from kdbench.core.version import __version__
        from kdbench.tasks.manifest import available_tasks, load_task

        rows = []
        for name in available_tasks():
            task = load_task(name)
            rows.append({"name": name, "description": task.description.strip().splitlines()[0] if task.description
                         else "", "distribution": "kdbench", "version": __version__})
        return rows
    return [
        {"name": p.name, "description": p.description, "distribution": p.distribution, "version": p.version}
        for p in get_registry().all(kind)
    ]
