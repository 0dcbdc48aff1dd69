"""``kdbench run``: the teacher and the no-KD baseline once per group, a student per (distiller, defense) cell,
each attacked; over the product of every list given (a grid)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

LIST_HELP = "Comma-separated names, `all`, and parameters as NAME:key=value,key=value."
BLIND = "blind"  # the reference baseline every run adds unless --no-blind


def _split(values: tuple[str, ...] | list[str]) -> list[str]:
    return [piece.strip() for value in values for piece in str(value).split(",") if piece.strip()]


@click.command()
@click.option("--distiller", "distillers", multiple=True, help=f"Distillers. {LIST_HELP}")
@click.option("--attack", "attacks", multiple=True, help=f"Attacks. {LIST_HELP}")
@click.option("--defense", "defenses", multiple=True, help=f"Defenses [default: none]. {LIST_HELP} "
              "Compose with +: nonorm+bottleneck.")
@click.option("--task", "tasks", multiple=True, help="Task names or manifest paths [default: synthetic-pii].")
@click.option("--seed", "seeds", multiple=True, help="Seeds, comma-separated [default: 0].")
@click.option("--grid", "grid_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A YAML grid file with the same keys (options given on the command line win).")
@click.option("--out", type=click.Path(path_type=Path), help="Output directory [default: runs/<timestamp>]. A "
              "non-empty one is refused unless it holds a run of the same configuration (resumed).")
@click.option("--force", is_flag=True, help="Write into a non-empty --out anyway, replacing its kdbench outputs.")
@click.option("--teacher", help="Teacher base: a Hugging Face model name or local directory [default: the task's].")
@click.option("--student", "students", multiple=True, help="Student bases (names or directories), comma-separated.")
@click.option("--family", type=click.Choice(["gpt2", "opt", "llama"]), help="[Z]'s model families by name.")
@click.option("--student-size", "sizes", multiple=True, help="With --family: small, medium, large (comma-separated).")
@click.option("--data-dir", type=click.Path(path_type=Path), envvar="KDBENCH_DATA_DIR",
              help="Local copies of hub datasets, for offline runs [env: KDBENCH_DATA_DIR].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--address", "ray_address", help="With --executor ray: the cluster address [default: a local one].")
@click.option("--threads", type=click.IntRange(min=1), help="torch threads per cell (results are identical for "
              "the same seed and thread count).")
@click.option("--micro-batch", type=click.IntRange(min=1), help="Rows per training forward pass, gradients "
              "accumulated to the recipe's batch [default: the whole batch, halved on out-of-memory].")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code from the hub (off by default).")
@click.option("--blind/--no-blind", default=True, show_default=True,
              help="Also run the `blind` reference baseline (no model; its AUC is the members/non-members shift).")
def run(**options: Any) -> None:
    """Distil, attack and score: e.g. `kdbench run --distiller kd --attack loss,mink`."""
    from kdbench.cli.reporter import RichReporter
    from kdbench.cli.results import print_summary
    from kdbench.core.errors import EXIT_FAILURES
    from kdbench.core.registry import get_registry
    from kdbench.evaluation.metrics import resolution_note, resolves
    from kdbench.results.dataframe import frame
    from kdbench.run.runner import Runner

    console = Console()
    config = build_config(options)
    signal.signal(signal.SIGTERM, _interrupt)  # a kill is an interruption: run.json says so, exit status 130
    result = Runner(config, get_registry(), reporter=RichReporter(console)).run()
    if result.records:
        print_summary(console, frame(r.to_json() for r in result.records))
        counts = sorted({m.n_nonmembers for e in result.evaluations for m in e.attacks.values()})
        for n in counts:  # TPR@1%FPR is only as fine as 1/n_nonmembers (docs/attacks.md, low-FPR resolution)
            if not resolves(0.01, n):
                console.print(f"[yellow]note[/]: {escape(resolution_note(n, 'the task evaluation.n_nonmembers'))}")
    print_deltas(console, result)
    console.print(
        f"Wrote [bold]{escape(str(result.out / 'results.jsonl'))}[/] and [bold]{escape(str(result.out / 'run.json'))}"
        f"[/] in {result.wall_time:.1f}s ({len(result.cache_builds)} artifacts built, "
        f"{len(result.cache_hits)} reused from the cache)."
    )
    if result.failures:
        console.print(f"[bold red]{len(result.failures)} cell(s) failed[/] (details in run.json):")
        for failure in result.failures:
            console.print(f"  - {escape(failure.cell.label)}: {escape(str(failure.error))}", soft_wrap=True)
    if result.attack_failures:
        console.print(f"[bold red]{len(result.attack_failures)} attack(s) failed[/] (their other results are kept):")
        for f in result.attack_failures:
            console.print(f"  - {escape(f['attack'])} on {escape(f['target'])}: {escape(f['error'])}", soft_wrap=True)
    if result.failures or result.attack_failures:
        sys.exit(EXIT_FAILURES)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def build_config(options: dict[str, Any]) -> Any:
    """Merge the command line with an optional grid file into a RunConfig (errors before any work)."""
    from kdbench.core.errors import KdbenchError
    from kdbench.core.params import PluginSpec, parse_specs
    from kdbench.models.families import get_family, student_for
    from kdbench.run.config import RunConfig
    from kdbench.run.grid import check_seeds, load_grid_file, parse_defense_stacks

    grid = load_grid_file(options["grid_file"]) if options.get("grid_file") else {}

    def pick(option: str, key: str) -> list[Any]:
        given = list(options.get(option) or [])
        return given if given else [str(v) for v in grid.get(key, [])]

    distillers, attacks = pick("distillers", "distiller"), pick("attacks", "attack")
    if not distillers or not attacks:
        raise KdbenchError("Give --distiller and --attack (or a --grid file with 'distiller' and 'attack').")
    attack_specs = parse_specs(attacks)
    if options.get("blind", True) and not {s.name for s in attack_specs} & {BLIND, "all"}:
        attack_specs.append(PluginSpec(BLIND))  # cheap, and says whether the membership numbers are confounded
    seeds_text = _split(pick("seeds", "seed")) or ["0"]
    try:
        seeds = [int(s) for s in seeds_text]
    except ValueError:
        raise KdbenchError(f"--seed takes integers, got {', '.join(seeds_text)}.") from None
    check_seeds(seeds, "--seed" if options.get("seeds") else f"{options.get('grid_file')}: key 'seed'")
    family_name = options.get("family") or (grid.get("family") or [None])[0]
    teacher = options.get("teacher") or (grid.get("teacher") or [None])[0]
    students: list[str | None] = list(_split(pick("students", "student")))
    sizes = _split(pick("sizes", "student_size"))
    if family_name:
        family = get_family(family_name)
        teacher = teacher or family.teacher
        students = students or [student_for(family, size) for size in (sizes or [family.default_size])]
    elif sizes:
        raise KdbenchError("--student-size needs --family (gpt2, opt or llama).")
    return RunConfig(
        distillers=parse_specs(distillers),
        attacks=attack_specs,
        defenses=parse_defense_stacks(pick("defenses", "defense") or ["none"]),
        tasks=_split(pick("tasks", "task")) or ["synthetic-pii"],
        seeds=seeds,
        models=[(teacher, student) for student in (students or [None])],
        family=family_name,
        data_dir=options.get("data_dir"),
        out=options.get("out"),
        device=options.get("device", "auto"),
        trust_remote_code=bool(options.get("trust_remote_code")),
        executor=options.get("executor", "local"),
        ray_address=options.get("ray_address"),
        threads=options.get("threads"),
        micro_batch=options.get("micro_batch"),
        force=bool(options.get("force")),
    )


def print_deltas(console: Console, result: Any) -> None:
    """Each defended cell against its undefended (``none``) cell: the table, and OUT/deltas.json."""
    from kdbench.results.deltas import defense_deltas, write_deltas

    deltas = defense_deltas(result.evaluations, result.records)
    if not deltas:
        return
    console.print(deltas_table(deltas))
    console.print(f"Wrote [bold]{escape(str(write_deltas(result.out, deltas)))}[/].")


def deltas_table(deltas: list[Any]) -> Table:
    """Δutility (ROUGE-L) and Δrisk (strongest attack's AUC) with 95% CIs, defended − undefended."""
    from kdbench.results.deltas import summary

    table = Table(title="Defenses vs. no defense (Δ = defended − none; ΔAUC < 0: privacy bought)",
                  title_justify="left")
    for column in ("student", "seed", "ΔROUGE-L [95% CI]", "strongest AUC\ndefended / none", "ΔAUC [95% CI]",
                   "measured"):
        table.add_column(column, justify="left" if column in ("student", "measured") else "right")
    for d in deltas:
        table.add_row(
            escape(f"{d.distiller} [{d.defense}]"), str(d.seed),
            f"{d.delta_rouge_l:+.1f} [{d.delta_rouge_l_ci[0]:+.1f}, {d.delta_rouge_l_ci[1]:+.1f}]"
            + ("" if d.utility_ci == "paired bootstrap" else "*"),
            f"{d.auc:.3f} ({escape(d.attack)}) / {d.reference_auc:.3f} ({escape(d.reference_attack)})",
            f"{d.delta_auc:+.3f} [{d.delta_auc_ci[0]:+.3f}, {d.delta_auc_ci[1]:+.3f}]",
            escape(summary(d.defense_report)),
        )
    if any(d.utility_ci != "paired bootstrap" for d in deltas):
        table.caption = "* CI from the two students' own CIs, as if independent (wider than paired)."
    return table
