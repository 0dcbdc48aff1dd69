"""``kdbench plugin``: tools for plugin authors (``kdbench plugin new attack NAME``)."""

from __future__ import annotations

from pathlib import Path

import click

from kdbench.cli.scaffold import KINDS


@click.group()
def plugin() -> None:
    """Tools for plugin authors: scaffold a plugin package (see docs/plugins.md)."""


@plugin.command("new")
@click.argument("kind", type=click.Choice(KINDS))
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Where to create the kdbench-NAME/ package directory.")
def new(kind: str, name: str, directory: Path) -> None:
    """Generate kdbench-NAME/: a pip-installable KIND plugin that works and passes its tests as generated."""
    from kdbench.cli.scaffold import PluginNames, new_plugin

    target = new_plugin(kind, name, directory)
    names = PluginNames.of(kind, name)
    click.echo(f"Created {target} ({names.distribution}: {kind} {name!r}, class {names.package}.{names.cls}).")
    steps = [
        (f"cd {target}", ""),
        ("pip install -e '.[test]'", "registers the entry point"),
        (f"kdbench list {kind}s", f"shows {name}"),
        ("pytest", "the conformance kit's checks (kdbench.testing)"),
    ]
    width = max(len(command) for command, _ in steps) + 2
    click.echo("Next:")
    for command, comment in steps:
        click.echo(f"  {command:<{width}}# {comment}" if comment else f"  {command}")
