"""``kdbench leaderboard build|add|reproduce|serve``: publish results as a static site (DESIGN.md §6).

Library errors (bad records, unwritable output) are KdbenchErrors; the group in ``kdbench.cli`` turns them
into a one-paragraph message and a non-zero exit.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from kdbench.core.errors import KdbenchError, OutputError
from kdbench.leaderboard.boards import select_blocks, select_boards, write_grid_files
from kdbench.leaderboard.ranking import DEFAULT_METRIC, DEFAULT_UTILITY_FLOOR, RISK_METRICS, Record
from kdbench.leaderboard.replicates import measurement
from kdbench.leaderboard.site import build_site, prepare_records
from kdbench.results.records import load_records, results_files

DEFAULT_INTO = Path("leaderboard/results/results.jsonl")
DEFAULT_BOARDS = Path("leaderboard/boards")
DEFAULT_RUNS = Path("leaderboard/runs")
INTERRUPTED = 130  # kdbench run's exit status after Ctrl-C (the shell's 128 + SIGINT)
_RESULTS = click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
_MEMBER_TEXT = click.option(
    "--include-member-text",
    is_flag=True,
    help="Keep record fields 'examples'/'samples' (raw member text). Off by default.",
)


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


@click.group()
def leaderboard() -> None:
    """Build, extend and preview the static privacy-utility leaderboard."""


@leaderboard.command()
@_RESULTS
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write the site to (replaced if it holds a previous build).",
)
@click.option(
    "--rank-by",
    type=click.Choice(list(RISK_METRICS)),
    default=DEFAULT_METRIC,
    show_default=True,
    help="Risk metric the pages rank by first: the strongest common attack's AUC, or its TPR@1%FPR. "
    "Both rankings are built; the pages switch between them.",
)
@click.option(
    "--utility-floor",
    type=click.FloatRange(0.0, 1.0),
    default=DEFAULT_UTILITY_FLOOR,
    show_default=True,
    help="Students with ROUGE-L below this fraction of the no-KD baseline's are 'unusable at this setting': "
    "ranked after every usable entry, never on the frontier (0 disables).",
)
@_MEMBER_TEXT
def build(
    results: tuple[Path, ...], out: Path, rank_by: str, utility_floor: float, include_member_text: bool
) -> None:
    """Validate RESULTS (run directories or JSONL files), merge them and write a static site to --out."""
    report = build_site(
        list(results), out, include_member_text=include_member_text, metric=rank_by, floor=utility_floor
    )
    console = _console()
    console.print(
        f"Read {report.records_read} records from {report.files} file(s); "
        f"dropped {report.merge.exact_duplicates} identical, replaced {report.merge.replaced} superseded."
    )
    if report.shared_seeds:
        console.print(
            f"{len(report.shared_seeds)} seed(s) of a configuration appear in several runs with identical "
            "results; each counts as one replicate."
        )
    if report.unusable:
        console.print(f"{report.unusable} entr(y/ies) below the utility floor: shown as unusable at this setting.")
    for gap in report.gaps:
        console.print(
            f"[yellow]Warning:[/] {escape(gap.task)} ({escape(gap.protocol)}): {len(gap.entries)} entr(y/ies) "
            f"lack {escape(', '.join(gap.attacks))} and are ranked on the common attacks only. To complete the "
            "board, run:"
        )
        for command in gap.commands:
            console.print(f"  {escape(command)}")
    if report.member_text_omitted:
        console.print(
            f"Omitted {report.member_text_omitted} member-text field(s) (use --include-member-text)."
        )
    console.print(
        f"[bold green]Built[/] {report.pages} pages: {report.boards} board(s), {report.entries} ranked "
        f"entries → {escape(str(out / 'index.html'))}"
    )


@dataclass
class AddReport:
    added: int
    duplicates: int
    total: int
    member_text_omitted: int


def add_records(
    paths: Sequence[Path], into: Path, include_member_text: bool = False, study: Mapping[str, object] | None = None
) -> AddReport:
    """Append the valid records of ``paths`` whose measurement ``into`` does not already hold.

    ``study`` (board, block, the run's wall time) is stamped into each record's provenance by ``reproduce``, so a
    published number says which study run produced it and what it cost.
    """
    new, omitted = prepare_records(load_records(results_files(paths)), include_member_text)
    if study:
        for record in new:
            record["provenance"] = {**record.get("provenance", {}), "study": dict(study)}
    existing = load_records([into]) if into.exists() else []
    seen = {measurement(r) for r in existing}
    fresh: list[Record] = []
    for record in new:
        text = measurement(record)
        if text not in seen:
            seen.add(text)
            fresh.append(record)
    if fresh:
        _append_atomically(into, fresh)
    return AddReport(len(fresh), len(new) - len(fresh), len(existing) + len(fresh), omitted)


def _append_atomically(into: Path, records: Sequence[Record]) -> None:
    """Old content plus new lines go to a temp file beside ``into``, then os.replace: never half-written."""
    if not into.parent.is_dir():
        raise OutputError(f"{into.parent} does not exist; run from the repository root or pass --into FILE.")
    old = into.read_text(encoding="utf-8") if into.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    lines = "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in records)
    fd, tmp = tempfile.mkstemp(prefix=f".{into.name}.", dir=into.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(old + lines)
        os.chmod(tmp, 0o644)
        os.replace(tmp, into)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@leaderboard.command()
@_RESULTS
@click.option(
    "--into",
    "into",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_INTO,
    show_default=True,
    help="The results file of record to append to.",
)
@_MEMBER_TEXT
def add(results: tuple[Path, ...], into: Path, include_member_text: bool) -> None:
    """Validate a contribution (RESULTS) and append its new records to the leaderboard's data of record."""
    report = add_records(list(results), into, include_member_text)
    console = _console()
    if report.member_text_omitted:
        console.print(
            f"Omitted {report.member_text_omitted} member-text field(s) (use --include-member-text)."
        )
    console.print(
        f"[bold green]Added[/] {report.added} record(s) to {escape(str(into))}; skipped {report.duplicates} "
        f"duplicate(s); {report.total} in total."
    )


@leaderboard.command()
@click.argument("boards", nargs=-1)
@click.option("--boards-dir", type=click.Path(file_okay=False, exists=True, path_type=Path), default=DEFAULT_BOARDS,
              show_default=True, help="Where the board files are.")
@click.option("--block", "blocks", multiple=True, metavar="NAME",
              help="Run only this block of the boards (repeatable), to run a study in parts.")
@click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_RUNS,
              show_default=True, help="Run directories, one per board block (resumed when run again).")
@click.option("--into", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_INTO, show_default=True,
              help="The results file of record the finished blocks are appended to.")
@click.option("--site", type=click.Path(file_okay=False, path_type=Path), default=Path("site"), show_default=True,
              help="Where to build the site from --into once the boards have run.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="KDBENCH_DATA_DIR",
              help="Data directory for boards on real data (e.g. ../shared/data); boards that need one are "
                   "skipped without it.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--address", "ray_address", help="With --executor ray: the cluster address.")
def reproduce(boards: tuple[str, ...], boards_dir: Path, blocks: tuple[str, ...], runs_dir: Path, into: Path,
              site: Path, data_dir: Path | None, executor: str, ray_address: str | None) -> None:
    """Run the published study (BOARDS, default all), append its records to --into and build the site.

    Each block of a board is one `kdbench run --grid`; a block that ran before resumes from its run directory
    and the cache, so an interrupted study is finished by running the same command again.
    """
    console = _console()
    selected = select_blocks(select_boards(boards_dir, boards), blocks)
    failed_blocks: list[str] = []
    for board in selected:
        if board.needs_data_dir and data_dir is None:
            console.print(f"[yellow]Skipped[/] board {board.name}: it runs on real data; pass --data-dir.")
            continue
        for block_run in write_grid_files(board, runs_dir):
            block, grid_file, out = block_run.block, block_run.grid_file, block_run.out
            label = f"{board.name}/{block.name}"
            if block_run.superseded is not None:
                console.print(f"{escape(label)}: the board changed since its last run; that run was moved to "
                              f"{escape(str(block_run.superseded))} and the block starts afresh (finished cells "
                              "come from the cache).")
            command = [sys.executable, "-m", "kdbench", "run", "--grid", str(grid_file), "--out", str(out),
                       "--executor", executor]
            if ray_address:
                command += ["--address", ray_address]
            if board.needs_data_dir and data_dir is not None:
                command += ["--data-dir", str(data_dir)]
            console.print(f"[bold]{escape(label)}[/]: {escape(' '.join(command[1:]))}")
            status = _run_block(command)
            if status == INTERRUPTED:
                raise KeyboardInterrupt
            if status not in (0, 1):
                raise KdbenchError(f"{label}: kdbench run exited with status {status}; see its message above.")
            if status == 1:
                failed_blocks.append(label)
            run_json = json.loads((out / "run.json").read_text(encoding="utf-8"))
            study = {"board": board.name, "block": block.name, "run_wall_time": run_json.get("wall_time"),
                     "machine": run_json.get("machine"), "finished": run_json.get("finished")}
            report = add_records([out], into, study=study)
            console.print(f"{escape(label)}: added {report.added} record(s) to {escape(str(into))}; "
                          f"{report.duplicates} already there.")
    built = build_site([into], site)
    console.print(f"[bold green]Built[/] {built.pages} pages from {escape(str(into))} → "
                  f"{escape(str(site / 'index.html'))}")
    if failed_blocks:
        raise KdbenchError(f"Some cells failed in {', '.join(failed_blocks)} (their records are missing); "
                           "see run.json there, then run the same command again.")


def _run_block(command: list[str]) -> int:
    """One block as its own process (as a user would run it): its memory is returned when it ends."""
    started = time.perf_counter()
    try:
        status = subprocess.run(command, check=False).returncode
    except KeyboardInterrupt:
        return INTERRUPTED
    _console().print(f"  ({time.perf_counter() - started:.0f} s)")
    return status


def make_server(site: Path, port: int, host: str = "127.0.0.1") -> http.server.ThreadingHTTPServer:
    """An HTTP server for ``site`` (port 0 picks a free one)."""
    if not (site / "index.html").is_file():
        raise KdbenchError(f"{site} has no index.html; build a site first with 'kdbench leaderboard build'.")
    handler = functools.partial(_QuietHandler, directory=str(site))
    try:
        return http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise KdbenchError(f"Cannot listen on {host}:{port} ({exc.strerror}); pick another --port.") from None


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static files without a log line per request."""

    def log_message(self, format: str, *args: object) -> None:  # the base class's signature
        pass


@leaderboard.command()
@click.argument("site", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
def serve(site: Path, port: int, host: str) -> None:
    """Preview a built SITE at http://HOST:PORT/ (Ctrl-C stops)."""
    server = make_server(site, port, host)
    console = _console()
    console.print(
        f"Serving {escape(str(site))} at [bold]http://{host}:{server.server_address[1]}/[/] (Ctrl-C stops)"
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("Stopped.")
    finally:
        server.server_close()
