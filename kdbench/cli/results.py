"""``kdbench results``: show, compare and export finished runs, from ``kdbench.results.load``'s DataFrame.

The tables keep a fixed number of columns whatever the number of attacks (attacks become rows), so they stay
readable at 80 columns, in a pipe or a log; ``kdbench run`` closes with the same :func:`summary_tables`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kdbench.core.errors import KdbenchError

AUC_TITLE = "AUC: higher = more leakage; 0.5 = chance"
VALUE_TITLES = {
    "auc": "AUC [95% CI]",
    "tpr_at_1pct_fpr": "TPR at 1% FPR",
    "balanced_accuracy": "best balanced accuracy",
    "member_tpr": "members flagged (TPR) at [C]'s threshold",
    "member_precision": "precision at [C]'s threshold",
}
"""The per-attack view's values (mean over replicates; docs/results.md)."""
TABLE_STYLE: dict[str, Any] = {"box": box.SIMPLE_HEAD, "pad_edge": False, "padding": (0, 1, 0, 0)}  # 80 columns


@click.group("results")
def results() -> None:
    """Look at, aggregate over seeds, compare and export finished runs (docs/results.md)."""


@results.command("show")
@click.argument("runs", nargs=-1, required=True)
@click.option("--per-attack/--no-per-attack", default=None,
              help="Also show every attack against every target [default: when there are several attacks].")
@click.option("--value", type=click.Choice(list(VALUE_TITLES)), default="auc", show_default=True,
              help="What the per-attack view shows: the AUC with its CI, or a thresholded metric (member_tpr and "
                   "member_precision: [C]'s member-specific risk).")
def show(runs: tuple[str, ...], per_attack: bool | None, value: str) -> None:
    """Summarise RUNS (run directories, results files or glob patterns), seeds aggregated."""
    from kdbench.results.dataframe import load

    console = Console(highlight=False)
    print_summary(console, load(*runs), per_attack=per_attack if value == "auc" else True, value=value)


@results.command("compare")
@click.argument("a")
@click.argument("b")
@click.argument("runs", nargs=-1)
def compare(a: str, b: str, runs: tuple[str, ...]) -> None:
    """B against A, side by side with Δ = B − A and its CI.

    A and B are two runs (directories, files or globs), or two selections KEY=VALUE of the records in RUNS, e.g.
    `compare defense=none defense=dp-sgd runs/x` or `compare distiller=kd distiller=gkd runs/x`.
    """
    from kdbench.results.dataframe import load
    from kdbench.results.summary import compare as compare_frames

    if _is_selection(a) and _is_selection(b):
        if not runs:
            raise KdbenchError(f"Selections {a} and {b} need the runs to select from: add RUNS… after them.")
        df = load(*runs)
        left, right = _select(df, a), _select(df, b)
        on = _match_keys(a.split("=", 1)[0])
    elif runs:
        raise KdbenchError("Give two runs (A B), or two selections KEY=VALUE followed by the runs.")
    else:
        left, right, on = load(a), load(b), ["task", "cell", "attack_label"]
    pair = compare_frames(left, right, on=on)
    if pair.empty:
        raise KdbenchError(f"Nothing in {a} matches {b} (matched on {', '.join(on)}).")
    Console(highlight=False).print(compare_table(pair, a, b, on))


@results.command("export")
@click.argument("runs", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet", "markdown", "latex", "json"]),
              default="markdown", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here [default: standard output].")
def export(runs: tuple[str, ...], fmt: str, out: Path | None) -> None:
    """The paper table of RUNS: one row per target, each attack's AUC (mean ± sd over seeds), ROUGE-L and
    memorization ([Z]-style distillers × attacks)."""
    from kdbench.results.dataframe import load
    from kdbench.results.export import render, write
    from kdbench.results.summary import paper_table

    table = paper_table(load(*runs))
    if out is None:
        click.echo(render(table, fmt), nl=False)
    else:
        click.echo(f"Wrote {write(table, fmt, out)}", err=True)


def print_summary(console: Console, df: Any, per_attack: bool | None = None, value: str = "auc") -> None:
    """The summary tables of ``df`` and, when a reference baseline's CI lies above chance, the warning."""
    from kdbench.results.summary import confounded

    if df.empty:
        raise KdbenchError("No results records to show.")
    for table in summary_tables(df, console.width, per_attack, value):
        console.print(table)
    for warning in confounded(df):
        console.print(f"[yellow]warning[/]: {escape(warning)}", soft_wrap=False)


def summary_tables(df: Any, width: int = 80, per_attack: bool | None = None, value: str = "auc") -> list[Table]:
    """One row per target (its strongest attack), then, with several membership attacks, attacks × targets (``value``
    in the cells) in as many tables as ``width`` needs."""
    from kdbench.results.summary import aggregate, by_target, references
    from kdbench.results.summary import per_attack as attack_view

    agg = aggregate(df)
    tables = [target_table(by_target(agg), references(agg), width)]
    attacks = agg.loc[~agg["reference"], "attack_label"].nunique()  # the reference row is in the first table
    if per_attack or (per_attack is None and attacks > 1):
        if value not in agg.columns:
            raise KdbenchError(f"The records have no {value!r} (written by an older kdbench?): show another --value.")
        view = attack_view(agg, value)
        fit = max(1, (width - 16) // 16)
        for start in range(0, len(view.columns), fit):
            tables.append(attack_table(view, agg, list(view.columns[start:start + fit]), value))
    return tables


def target_table(targets: Any, refs: Any, width: int = 120) -> Table:
    """Teacher, baseline and students: ROUGE-L, memorization, PII leakage (when ``width`` allows) and the strongest
    attack's AUC over seeds."""
    several = bool((targets["n"] > 1).any()) if "n" in targets else False
    seeds = f", mean of {int(targets['n'].max())} seeds" if several else ""
    table = Table(title=f"kdbench results ({AUC_TITLE}{seeds})", title_justify="left", **TABLE_STYLE)
    table.add_column("target")
    table.add_column("ROUGE-L", justify="right")
    table.add_column("memorized\nmem/non", justify="right")
    # PII leakage, greedy then the best of k samples (docs/results.md), where the terminal has room for it (each
    # column takes 11; without them the table fits 80 columns, and `kdbench results export` always has them)
    pii = "pii_members" in targets and bool(targets["pii_members"].notna().any()) and width >= 92
    best_of_k = pii and "pii_members_k" in targets and bool(targets["pii_members_k"].notna().any()) and width >= 104
    if pii:
        table.add_column("PII\nmem/non", justify="right")
    if best_of_k:
        table.add_column(f"PII@{int(targets['pii_k'].max())}\nmem/non", justify="right")
    table.add_column("strongest\nattack")
    table.add_column("AUC [95% CI]", justify="right", no_wrap=True)
    if several:
        table.add_column("sd", justify="right")
    table.add_column("TPR@1%", justify="right")
    multi_task = targets["task"].nunique() > 1
    for _, r in targets.iterrows():
        name = f"{r['task']} {r['cell']}" if multi_task else str(r["cell"])
        row = [escape(name), _num(r["rouge_l"], 1), f"{_num(r['mem_members'], 2)}/{_num(r['mem_nonmembers'], 2)}",
               *([f"{_num(r['pii_members'], 2)}/{_num(r['pii_nonmembers'], 2)}"] if pii else []),
               *([f"{_num(r['pii_members_k'], 2)}/{_num(r['pii_nonmembers_k'], 2)}"] if best_of_k else []),
               escape(str(r["strongest"])), _auc_ci(r)]
        table.add_row(*row, *([_num(r["auc_sd"], 3)] if several else []), _tpr(r))
    for i, (_, r) in enumerate(refs.iterrows()):
        name = f"{r['task']} " if multi_task else ""
        row = [f"[dim]{escape(name)}(reference)[/]", "", "", *[""] * (pii + best_of_k), escape(str(r["attack_label"])),
               _auc_ci(r)]
        table.add_row(*row, *([_num(r["auc_sd"], 3)] if several else []), "", end_section=False)
        if i == 0:
            table.rows[-2].end_section = True  # a rule between the targets and the references
    if len(refs):
        table.caption = ("reference rows use no model: an AUC whose CI is above 0.5 means members and "
                         "non-members differ in distribution, not that the targets leak.")
        table.caption_justify = "left"
    return table


def _tpr(r: Any) -> str:
    """TPR@1%FPR, marked * when the non-members cannot resolve 1% (1/n > 1%: it is the TPR at zero false
    positives; the run prints the resolution note)."""
    resolution = r.get("fpr_resolution")
    coarse = resolution is not None and resolution == resolution and resolution > 0.01 * (1 + 1e-9)
    return _num(r["tpr_at_1pct_fpr"], 3) + ("*" if coarse else "")


def attack_table(view: Any, agg: Any, columns: Sequence[str], value: str = "auc") -> Table:
    """Attacks as rows, ``columns`` (targets) as columns: mean AUC with its CI below it, or mean ``value``."""
    table = Table(title=f"{VALUE_TITLES[value]} per attack", title_justify="left", **TABLE_STYLE)
    table.add_column("attack")
    for column in columns:
        table.add_column(escape(str(column)), justify="right")
    reference_labels = set(agg.loc[agg["reference"], "attack_label"])
    cells = {(r["attack_label"], _column(r, agg)): r for _, r in agg.iterrows()}
    for attack in view.index:
        label = f"{attack} (ref.)" if attack in reference_labels else str(attack)
        row = []
        for column in columns:
            r = cells.get((attack, column))
            if r is None:
                row.append("–")
            elif value == "auc":
                row.append(f"{r['auc']:.3f}\n[{_num(r['auc_lo'], 2)}, {_num(r['auc_hi'], 2)}]")
            else:
                row.append(_num(r[value], 3))
        table.add_row(escape(label), *row)
    return table


def compare_table(pair: Any, a: str, b: str, on: Sequence[str]) -> Table:
    """Matched rows of A and B: AUC of each, ΔAUC and ΔROUGE-L (B − A) with CIs."""
    table = Table(title=f"B = {escape(b)} vs A = {escape(a)} (Δ = B − A; CI as if independent)",
                  title_justify="left", **TABLE_STYLE)
    keys = [k for k in on if k in ("cell", "attack_label") or pair[k].nunique() > 1]  # constant columns say nothing
    for key in keys:
        table.add_column({"attack_label": "attack", "cell": "target"}.get(key, key.removesuffix("_label")))
    for column in ("AUC A", "AUC B", "ΔAUC [95% CI]", "ΔROUGE-L [95% CI]"):
        table.add_column(column, justify="right", no_wrap=True)
    for _, r in pair.iterrows():
        label = [escape(str(r[k])) + (" (ref.)" if k == "attack_label" and r["reference_a"] else "") for k in keys]
        table.add_row(
            *label, f"{r['auc_a']:.3f}", f"{r['auc_b']:.3f}",
            f"{r['delta_auc']:+.3f} [{r['delta_auc_lo']:+.2f}, {r['delta_auc_hi']:+.2f}]",
            f"{r['delta_rouge_l']:+.1f} [{r['delta_rouge_l_lo']:+.1f}, {r['delta_rouge_l_hi']:+.1f}]",
        )
    return table


def _is_selection(text: str) -> bool:
    return "=" in text and not Path(text).exists()


def _select(df: Any, selection: str) -> Any:
    key, value = selection.split("=", 1)
    if key not in df.columns:
        raise KdbenchError(f"Cannot select {selection}: the records have no column {key!r} (e.g. distiller, "
                           "defense, seed, attack, task, run_id).")
    chosen = df[df[key].astype(str) == value]
    if chosen.empty:
        found = ", ".join(sorted({str(v) for v in df[key].dropna()})[:10])
        raise KdbenchError(f"No records with {key}={value}; found: {found}.")
    return chosen


def _match_keys(key: str) -> list[str]:
    """What rows of the two sides must share: everything that identifies a row but the selected key."""
    if key.startswith("distiller"):
        return ["task", "target", "defense_label", "attack_label"]
    if key.startswith("defense"):
        return ["task", "target", "distiller_label", "attack_label"]
    if key in ("task", "protocol"):  # e.g. [Z]'s protocol against [C]'s: the same cells on two tasks
        return ["cell", "attack_label"]
    return ["task", "cell", "attack_label"]


def _column(row: Any, agg: Any) -> str:
    return str(row["cell"]) if agg["task"].nunique() == 1 else f"{row['task']} {row['cell']}"


def _auc_ci(r: Any) -> str:
    return f"{r['auc']:.3f} [{_num(r['auc_lo'], 2)}, {_num(r['auc_hi'], 2)}]"


def _num(value: Any, digits: int) -> str:
    try:
        return "–" if value is None or value != value else f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return "–"
