"""``kdbench tasks``: list, show, validate, verify, freeze and export task manifests and their split manifests.

``verify`` is what lets two people prove they evaluate the identical splits. Without data it checks what a fresh
checkout can (each split manifest consistent with itself and its task; generated tasks recomputed); with
``--data-dir`` it recomputes every task's splits from the data and compares. An unfrozen task is reported and,
with data, at least loaded and split; it fails only under ``--strict``.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kdbench.core.errors import EXIT_FAILURES, KdbenchError
from kdbench.tasks.export import EXPORT_FORMATS, METADATA_FILE, export_task
from kdbench.tasks.manifest import Task, available_tasks, load_task
from kdbench.tasks.sources import MissingDataError
from kdbench.tasks.splits import (
    Splits,
    check_split_manifest,
    compare_splits,
    freeze_splits,
    make_splits,
    pinned_file_mismatch,
    read_split_manifest,
    split_manifest_path,
)

NON_MEMBER_ROLES = ("holdout", "eval", "public")  # what `show` may print: never the private (member) role
STYLE = {"verified": "green", "consistent": "green", "unfrozen": "yellow", "no-data": "yellow",
         "mismatch": "bold red", "error": "bold red"}

data_dir_option = click.option(
    "--data-dir", type=click.Path(path_type=Path), envvar="KDBENCH_DATA_DIR",
    help="Local copies of hub datasets (a directory, or the data file itself) [env: KDBENCH_DATA_DIR].",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@click.group("tasks")
def tasks() -> None:
    """Task manifests and their frozen splits (docs/tasks.md)."""


# --- list ---------------------------------------------------------------------------------------------------------
@tasks.command("list")
@json_option
def list_tasks(as_json: bool) -> None:
    """The shipped tasks: protocol, source and whether their splits are frozen (sizes and tags with --json)."""
    rows = [_summary(name) for name in available_tasks()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        table = Table(title="kdbench tasks (details: kdbench tasks show NAME)", title_justify="left")
        table.add_column("name", no_wrap=True)
        for column in ("protocol", "source", "frozen", "description"):
            table.add_column(column, overflow="fold")
        for row in rows:
            frozen = "[green]yes[/]" if row["frozen"] else "[yellow]no[/]"
            source = " ".join(str(row["source"]).split()[:2]).split("@")[0]  # kind and name; the rest in --json
            table.add_row(escape(row["name"]), row["protocol"], escape(source), frozen,
                          escape(row["description"] or row.get("error", "")))
        Console().print(table)
    if any("error" in row for row in rows):
        sys.exit(EXIT_FAILURES)


def _summary(name: str) -> dict[str, Any]:
    try:
        task = load_task(name)
    except KdbenchError as exc:
        return {"name": name, "protocol": "?", "source": "?", "splits": "?", "frozen": False, "description": "",
                "error": str(exc)}
    return {
        "name": task.name,
        "protocol": task.protocol,
        "source": describe_source(task),
        "splits": describe_sizes(task),
        "distill_on": task.distill_on,
        "frozen": split_manifest_path(task).exists(),
        "tags": list(task.tags),
        "description": task.description,
    }


def describe_source(task: Task) -> str:
    source = task.source
    if "generator" in source:
        return f"generator {source['generator']}"
    if "hub" in source:
        hub = source["hub"]
        return f"hub {hub['id']}@{hub['revision'][:12]} {hub['data_files']}"
    return f"file {source['file']}"


def describe_sizes(task: Task) -> str:
    """The split sizes as the manifest states them (the data decides the rest)."""
    if task.protocol == "shuffle":
        return " / ".join(f"{role} {task.sizes[role]}" for role in task.roles)
    parts = {
        "dolly-z": f"rows < {task.holdout_rows}: eval {task.eval_rows} + holdout; rest halved private / public",
        "ranges": ", ".join(f"{role} [{a}, {b})" for role, (a, b) in task.ranges.items()),
        "eval-only": "eval: every row",
    }[task.protocol]
    if task.sizes:
        parts += "; sizes " + ", ".join(f"{role} {n}" for role, n in task.sizes.items())
    if task.categories:
        parts += "; categories " + ", ".join(task.categories)
    return parts


# --- show ---------------------------------------------------------------------------------------------------------
@tasks.command("show")
@click.argument("name")
@data_dir_option
@click.option("--examples", "n_examples", default=2, show_default=True, type=click.IntRange(min=0),
              help="Examples to print per non-member role (holdout, eval, public; never private).")
@json_option
def show(name: str, data_dir: Path | None, n_examples: int, as_json: bool) -> None:
    """Sizes, content hashes, category mix and a few non-member examples of a task's splits."""
    task = load_task(name)
    splits = make_splits(task, data_dir=data_dir, check_pin=False)
    status, problems = _frozen_status(task, splits)
    report = {
        "task": task.name,
        "version": task.version,
        "protocol": task.protocol,
        "distill_on": task.distill_on,
        "source": splits.origin,
        "data": splits.location,
        "duplicates_dropped": splits.duplicates_dropped,
        "split_manifest": {"path": str(split_manifest_path(task)), "status": status, "problems": problems},
        "roles": {
            role: {"n": len(ex), "sha256": h, "categories": dict(Counter(e.category for e in ex).most_common())}
            for (role, ex), h in zip(splits.roles.items(), splits.hashes().values(), strict=True)
        },
        "examples": {role: [e.to_dict() for e in splits.roles[role][:n_examples]]
                     for role in NON_MEMBER_ROLES if role in splits.roles},
    }
    note = pinned_file_mismatch(task, splits)
    if note:
        report["note"] = note
    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
        return
    _print_show(task, splits, report)


def _frozen_status(task: Task, splits: Splits) -> tuple[str, list[str]]:
    path = split_manifest_path(task)
    if not path.exists():
        return "unfrozen", []
    problems = compare_splits(task, splits, read_split_manifest(path), path)
    return ("mismatch" if problems else "verified"), problems


def _print_show(task: Task, splits: Splits, report: dict[str, Any]) -> None:
    console = Console(highlight=False)
    console.print(f"[bold]{escape(task.name)}[/] v{task.version}: {escape(task.description)}", soft_wrap=True)
    console.print(f"protocol {task.protocol}, distill on {task.distill_on}; data: {escape(splits.location)}; "
                  f"{splits.duplicates_dropped} duplicate(s) dropped", soft_wrap=True)
    status = report["split_manifest"]["status"]
    console.print(f"split manifest {escape(report['split_manifest']['path'])}: [{STYLE[status]}]{status}[/]",
                  soft_wrap=True)
    for line in [*report["split_manifest"]["problems"], report.get("note", "")]:
        if line:
            console.print(f"  [yellow]{escape(line)}[/]", soft_wrap=True)
    table = Table(title_justify="left")
    for column in ("role", "n", "sha256", "categories"):
        table.add_column(column, overflow="fold")
    for role, info in report["roles"].items():
        mix = ", ".join(f"{c} {n}" for c, n in info["categories"].items())
        table.add_row(role, str(info["n"]), info["sha256"][:16] + "…", escape(mix))
    console.print(table)
    for role, examples in report["examples"].items():
        for example in examples:
            console.print(f"[bold]{role}[/] {escape(example['id'])} ({escape(example['category'])})", soft_wrap=True)
            for key in ("instruction", "context", "response"):
                if example[key]:
                    console.print(f"  {key}: {escape(_clip(example[key]))}", soft_wrap=True)


def _clip(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# --- validate -----------------------------------------------------------------------------------------------------
@tasks.command("validate")
@click.argument("paths", nargs=-1)
@json_option
def validate(paths: tuple[str, ...], as_json: bool) -> None:
    """Check manifests against the schema, without touching data (all shipped tasks when no PATH is given)."""
    shipped = available_tasks()
    targets = list(paths) or [str(path.resolve()) for path in shipped.values()]
    results = [_validate_one(target, shipped) for target in targets]
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        console = Console(highlight=False)
        for result in results:
            mark = "[green]ok[/]" if result["ok"] else "[bold red]invalid[/]"
            console.print(f"{mark} {escape(result['path'])}" + (f": {escape(result['error'])}" if result["error"]
                                                                  else ""), soft_wrap=True)
    if not all(result["ok"] for result in results):
        sys.exit(EXIT_FAILURES)


def _validate_one(target: str, shipped: dict[str, Path]) -> dict[str, Any]:
    try:
        task = load_task(target)
        if Path(target).resolve() in {p.resolve() for p in shipped.values()} and task.name != Path(target).stem:
            raise KdbenchError(f"{target}: key 'name' is {task.name!r}, but a shipped task is named after its file "
                               f"({Path(target).stem!r}).")
    except KdbenchError as exc:
        return {"path": target, "ok": False, "error": str(exc)}
    return {"path": target, "ok": True, "error": ""}


# --- verify -------------------------------------------------------------------------------------------------------
@dataclass
class Verification:
    task: str
    status: str  # verified | consistent | unfrozen | no-data | mismatch | error
    message: str = ""
    blind: dict[str, Any] | None = None  # with --blind: the blind baseline's AUC on the task's attack samples


@tasks.command("verify")
@click.argument("names", nargs=-1)
@data_dir_option
@click.option("--strict", is_flag=True, help="Also fail on tasks without a split manifest (unfrozen).")
@click.option("--skip-unavailable", is_flag=True,
              help="With --data-dir, do not fail on frozen tasks whose data is not there (still reported).")
@click.option("--blind", is_flag=True,
              help="Also measure each task's member/non-member distribution shift with the blind baseline (no "
                   "model; every task whose data is here; docs/attacks.md).")
@json_option
def verify(names: tuple[str, ...], data_dir: Path | None, strict: bool, skip_unavailable: bool, blind: bool,
           as_json: bool) -> None:
    """Check each task's split manifest: consistent with itself and its task without data; recomputed from the
    data and compared with --data-dir (all shipped tasks by default)."""
    results = [verify_one(name, data_dir, "blind" if blind else None) for name in (names or tuple(available_tasks()))]
    if as_json:
        click.echo(json.dumps([asdict(r) for r in results], indent=2))
    else:
        console = Console(highlight=False)
        for result in results:
            console.print(f"[{STYLE[result.status]}]{result.status}[/] {escape(result.task)}"
                          + (f": {escape(result.message)}" if result.message else ""), soft_wrap=True)
            if result.blind:
                console.print("  " + escape(_shift_line(result.blind)), soft_wrap=True)
    if _failed(results, strict, skip_unavailable):
        sys.exit(EXIT_FAILURES)


def verify_one(name: str, data_dir: Path | None, blind: str | None = None) -> Verification:
    """One task's verdict. ``verified``: recomputed from its data and equal to its split manifest; ``consistent``:
    no data given, the split manifest agrees with itself and the task; ``unfrozen``: no split manifest (with data:
    loaded and split fine); ``no-data``: frozen, but its data is not at --data-dir. With ``blind`` (a baseline
    spec), the baseline's AUC on the task's attack samples is measured whenever the data is here."""
    try:
        task = load_task(name)
        path = split_manifest_path(task)
        if not path.exists():
            return _unfrozen(task, path, data_dir, blind)
        recorded = read_split_manifest(path)
        inconsistent = check_split_manifest(task, recorded, path)
        if inconsistent:
            return Verification(task.name, "error", " ".join(inconsistent))
        if data_dir is None and task.source_kind != "generator":
            return Verification(task.name, "consistent", f"{path}: self-consistent ({_count(recorded)} examples); "
                                "data not checked (pass --data-dir to recompute the splits from it).")
        splits = make_splits(task, data_dir=data_dir, check_pin=False)
        shift = _shift(task, splits, blind) if blind and not task.eval_only else None
        problems = compare_splits(task, splits, recorded, path)
        note = pinned_file_mismatch(task, splits)
    except MissingDataError as exc:
        return Verification(name, "no-data", str(exc))
    except KdbenchError as exc:
        return Verification(name, "error", str(exc))
    if problems or note:
        return Verification(task.name, "mismatch", " ".join([*problems, *([note] if note else [])]), shift)
    return Verification(task.name, "verified", f"{path} ({_count(recorded)} examples from {splits.location})", shift)


def _unfrozen(task: Task, path: Path, data_dir: Path | None, blind: str | None = None) -> Verification:
    """An unfrozen task: said so, and with data, its data loaded and split (errors reported as errors)."""
    missing = (f"no split manifest {path}: its splits cannot be proven identical. A maintainer with the data runs "
               f"`kdbench tasks freeze {task.name} --data-dir DIR` and commits the file.")
    if data_dir is None and task.source_kind != "generator":
        return Verification(task.name, "unfrozen", missing + " Data not checked (no --data-dir).")
    try:
        splits = make_splits(task, data_dir=data_dir, check_pin=False)
    except MissingDataError as exc:
        return Verification(task.name, "unfrozen", f"{missing} Its data is not available: {exc}")
    except KdbenchError as exc:
        return Verification(task.name, "error", f"{missing} Its data could not be split: {exc}")
    note = pinned_file_mismatch(task, splits)
    shift = _shift(task, splits, blind) if blind and not task.eval_only else None
    sizes = ", ".join(f"{role} {len(ex)}" for role, ex in splits.roles.items())
    return Verification(task.name, "unfrozen", f"{missing} Data loaded and split ({sizes} from {splits.location})"
                        + (f"; note: {note}" if note else "") + ".", shift)


def _shift(task: Task, splits: Splits, baseline: str) -> dict[str, Any]:
    from kdbench.analysis.shift import measure_shift
    from kdbench.core.registry import get_registry

    shift = measure_shift(task, splits, get_registry(), baseline)
    return {**asdict(shift), "auc_ci": list(shift.auc_ci), "confounded": shift.confounded}


def _shift_line(shift: dict[str, Any]) -> str:
    lo, hi = shift["auc_ci"]
    verdict = ("members and non-members differ in distribution: membership AUCs on this task are confounded"
               if shift["confounded"] else "no distribution shift detected (CI not above 0.5)")
    return (f"{shift['baseline']} AUC {shift['auc']:.3f} [{lo:.3f}, {hi:.3f}] on {shift['n_members']} members / "
            f"{shift['n_nonmembers']} non-members: {verdict}.")


def _count(recorded: dict[str, Any]) -> int:
    return sum(len(info.get("ids", [])) for info in recorded["roles"].values())


def _failed(results: Iterable[Verification], strict: bool, skip_unavailable: bool) -> bool:
    allowed = {"verified", "consistent"} | ({"no-data"} if skip_unavailable else set())
    if not strict:
        allowed.add("unfrozen")
    return any(result.status not in allowed for result in results)


# --- freeze -------------------------------------------------------------------------------------------------------
@tasks.command("freeze")
@click.argument("name")
@data_dir_option
@click.option("--out", type=click.Path(path_type=Path), help="Write here instead of tasks/splits/<name>.json.")
@click.option("--force", is_flag=True, help="Overwrite a split manifest that differs, or freeze from a data file "
                                           "other than the one the manifest pins.")
def freeze(name: str, data_dir: Path | None, out: Path | None, force: bool) -> None:
    """Write a task's split manifest (for maintainers, with the task's data at hand)."""
    task = load_task(name)
    splits = make_splits(task, data_dir=data_dir, check_pin=False)
    note = pinned_file_mismatch(task, splits)
    if note and not force:
        raise KdbenchError(f"{note} Refusing to freeze from it; pass --force if this is intended.")
    path = freeze_splits(task, splits, out=out, force=force)
    console = Console(highlight=False)
    console.print(f"Wrote [bold]{escape(str(path))}[/] from {escape(splits.location)} "
                  f"({splits.duplicates_dropped} duplicate(s) dropped):", soft_wrap=True)
    for role, digest in splits.hashes().items():
        console.print(f"  {role:8} {len(splits.roles[role]):6}  {digest}", soft_wrap=True)


# --- export -------------------------------------------------------------------------------------------------------
@tasks.command("export")
@click.argument("name")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Directory to write (new or empty).")
@data_dir_option
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), default="arrow", show_default=True,
              help="arrow: a datasets.DatasetDict (load_from_disk); else one <role>.<format> file per role.")
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
def export(name: str, out: Path, data_dir: Path | None, fmt: str, force: bool) -> None:
    """Write a task's split roles (as `kdbench run` uses them) for other tools, with their hashes and license."""
    metadata = export_task(load_task(name), out, fmt, data_dir, force)
    console = Console(highlight=False)
    sizes = ", ".join(f"{role} {info['n']:,}" for role, info in metadata["roles"].items())
    frozen = "verified against its split manifest" if metadata["split_manifest"] else "unfrozen (no split manifest)"
    console.print(f"Wrote [bold]{escape(str(out))}[/] ({fmt}; {sizes}; {frozen}); details in {METADATA_FILE}.",
                  soft_wrap=True)
    if metadata["attribution"]:
        console.print(escape(f"{metadata['attribution']} Keep this attribution with anything published from it."),
                      soft_wrap=True)
