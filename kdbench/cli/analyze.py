"""``kdbench analyze``: analyses of trained models beyond the attack grid. ``blocks``: per-block privacy risk
(METHODS.md §6) of a model on disk with two sample files, or of every model of a finished run."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

TARGETS = ("teacher", "baseline", "student")
_PATH = click.Path(path_type=Path)


@click.group()
def analyze() -> None:
    """Analyses of trained models: per-block risk."""


@analyze.command()
@click.option("--model", help="A causal LM directory (GPT-2, OPT or Llama architecture) or hub name.")
@click.option("--members", type=_PATH, help="With --model: member samples (JSONL or text, as kdbench audit).")
@click.option("--nonmembers", type=_PATH, help="With --model: non-member samples.")
@click.option("--run", "run_dir", type=_PATH, help="A finished `kdbench run` directory: analyse its models on the "
              "run's own attack samples.")
@click.option("--target", "targets", multiple=True, type=click.Choice(TARGETS),
              help="With --run: which models (default: all).")
@click.option("--sigma", default=0.005, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Standard deviation of the weight noise.")
@click.option("--copies", default=5, show_default=True, type=click.IntRange(min=1),
              help="Perturbed copies per block (seeds 1..copies).")
@click.option("--out", type=_PATH, help="Where per_block.json goes [default: the run directory, or .].")
@click.option("--json", "as_json", is_flag=True, help="Print per_block.json to stdout.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the bootstrap.")
@click.option("--bootstrap", default=1000, show_default=True, type=click.IntRange(min=10))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def blocks(
    model: str | None, members: Path | None, nonmembers: Path | None, run_dir: Path | None, targets: tuple[str, ...],
    sigma: float, copies: int, out: Path | None, as_json: bool, seed: int, bootstrap: int, batch_size: int,
    device: str,
) -> None:
    """AUC of the loss-MoPe statistic when only one transformer block's weights are perturbed, per block."""
    from kdbench.analysis import per_block
    from kdbench.analysis.blocks import write_per_block
    from kdbench.core.errors import KdbenchError

    if (model is None) == (run_dir is None):
        raise KdbenchError("Give either --model (with --members and --nonmembers) or --run DIR.")
    options = {"sigma": sigma, "copies": copies, "seed": seed, "n_resamples": bootstrap}
    if model is not None:
        if members is None or nonmembers is None:
            raise KdbenchError("--model needs --members FILE and --nonmembers FILE.")
        reports, n = per_block.analyse_model(model, members, nonmembers, device, batch_size, options)
        out = out or Path(".")
    else:
        assert run_dir is not None
        reports, n = per_block.analyse_run(run_dir, set(targets or TARGETS), device, batch_size, options)
        out = out or run_dir
    path = write_per_block(out, reports, sigma=sigma, copies=copies, n_members=n[0], n_nonmembers=n[1])
    if as_json:
        click.echo(path.read_text(encoding="utf-8"), nl=False)
        return
    console = Console(highlight=False)
    for report in reports:
        table = Table(title=f"{report['target']} {escape(report['label'])} ({report['architecture']}): AUC per block",
                      title_justify="left")
        table.add_column("block", justify="right")
        table.add_column("AUC [95% CI]", justify="right")
        for row in report["blocks"]:
            table.add_row(str(row["block"]), f"{row['auc']:.3f} [{row['auc_ci'][0]:.2f}, {row['auc_ci'][1]:.2f}]")
        console.print(table)
    console.print(f"Wrote [bold]{escape(str(path))}[/].")
