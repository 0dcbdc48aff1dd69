"""``kdbench bases build|verify``: the embedded default's shipped pre-trained bases (kdbench.models.pretrain)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console

from kdbench.models.hub import SHIPPED_DIR


@click.group()
def bases() -> None:
    """The default task's pre-trained teacher and student bases (docs/tasks.md)."""


@bases.command("build")
@click.option("--out", type=click.Path(path_type=Path), default=SHIPPED_DIR, show_default=True,
              help="Where to write them (replaced whole, once every base is written).")
def build(out: Path) -> None:
    """Generate the corpus, train the tokenizer and pre-train every base (about 10 minutes on a 2-core CPU)."""
    from kdbench.cli.reporter import RichReporter
    from kdbench.models.pretrain import build_bases

    console = Console(stderr=True)
    manifest = build_bases(out, reporter=RichReporter(console))
    for name, entry in manifest["bases"].items():
        console.print(f"{name}: {entry['steps']} steps, loss {entry['first_loss']:.3f} -> {entry['final_loss']:.3f}, "
                      f"{entry['wall_s']:.0f} s")
    console.print(f"Wrote {out} ({manifest['corpus']['documents']:,} documents, {manifest['wall_s']:.0f} s).")


@bases.command("verify")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=SHIPPED_DIR, show_default=True)
def verify(directory: Path) -> None:
    """Check every shipped file against the SHA-256 its BASES.json records."""
    from kdbench.models.pretrain import verify as check

    manifest = check(directory)
    click.echo(json.dumps({name: entry["sha256"]["model.safetensors"] for name, entry in manifest["bases"].items()},
                          indent=2))
    click.echo(f"{directory}: every file matches {len(manifest['bases'])} bases' recorded hashes.")
