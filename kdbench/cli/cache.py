"""``kdbench cache ls|du|gc``: see and prune the artifact cache."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kdbench.core.cache import SPEC_FILE, default_root


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _artifacts(root: Path) -> list[tuple[str, Path, bool]]:
    """(kind, directory, complete) for every artifact directory, including leftovers of interrupted builds."""
    out = []
    for kind_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "locks"):
        for entry in sorted(kind_dir.iterdir()):
            if entry.is_dir():
                out.append((kind_dir.name, entry, (entry / SPEC_FILE).exists() and not entry.name.startswith(".tmp")))
    return out


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@click.group()
@click.option("--root", type=click.Path(path_type=Path), help="Cache directory [default: $KDBENCH_CACHE_DIR or "
              "~/.cache/kdbench].")
@click.pass_context
def cache(ctx: click.Context, root: Path | None) -> None:
    """Inspect and prune the content-addressed artifact cache."""
    ctx.obj = root or default_root()


@cache.command("ls")
@click.option("--kind", help="Only this kind (model, tokenizer, token_stats, generations, ...).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def ls(root: Path, kind: str | None, as_json: bool) -> None:
    """List artifacts: kind, key, size, age, and what they are."""
    rows = []
    if root.exists():
        for k, path, complete in _artifacts(root):
            if kind and k != kind:
                continue
            spec = json.loads((path / SPEC_FILE).read_text()) if complete else {}
            what = spec.get("stage", k)
            if "distiller" in spec:
                what += f" {spec['distiller']['name']}"
            rows.append({
                "kind": k, "key": path.name, "complete": complete, "bytes": _size(path),
                "modified": dt.datetime.fromtimestamp(path.stat().st_mtime).isoformat(timespec="seconds"),
                "what": what,
            })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"cache {escape(str(root))}", title_justify="left")
    for column in ("kind", "key", "size", "modified", "what"):
        table.add_column(column)
    for r in rows:
        key = r["key"][:16] + ("" if r["complete"] else " (incomplete)")
        table.add_row(r["kind"], key, _human(r["bytes"]), r["modified"], escape(r["what"]))
    Console().print(table)


@cache.command("du")
@click.pass_obj
def du(root: Path) -> None:
    """Disk use per kind of artifact."""
    totals: dict[str, int] = {}
    if root.exists():
        for k, path, _complete in _artifacts(root):
            totals[k] = totals.get(k, 0) + _size(path)
    table = Table(title=f"cache {escape(str(root))}", title_justify="left")
    table.add_column("kind")
    table.add_column("size", justify="right")
    for k, n in sorted(totals.items()):
        table.add_row(k, _human(n))
    table.add_row("[bold]total[/]", _human(sum(totals.values())))
    Console().print(table)


@cache.command("gc")
@click.option("--older-than", type=click.FloatRange(min=0), help="Also remove complete artifacts not modified in "
              "this many days.")
@click.option("--kind", help="With --older-than or --all: only this kind.")
@click.option("--all", "remove_all", is_flag=True, help="Remove every artifact (of --kind, if given).")
@click.option("--dry-run", is_flag=True)
@click.pass_obj
def gc(root: Path, older_than: float | None, kind: str | None, remove_all: bool, dry_run: bool) -> None:
    """Remove leftovers of interrupted builds (always), and old or all artifacts when asked."""
    removed, freed = 0, 0
    cutoff = time.time() - older_than * 86400 if older_than is not None else None
    if root.exists():
        for k, path, complete in _artifacts(root):
            stale = not complete and time.time() - path.stat().st_mtime > 3600  # a build running now is spared
            chosen = (not kind or k == kind) and (remove_all or (cutoff is not None and path.stat().st_mtime < cutoff))
            if stale or (complete and chosen):
                freed += _size(path)
                removed += 1
                if not dry_run:
                    shutil.rmtree(path, ignore_errors=True)
    verb = "Would remove" if dry_run else "Removed"
    Console().print(f"{verb} {removed} artifact(s), {_human(freed)}.")
