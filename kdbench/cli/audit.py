"""``kdbench audit``: run the attack suite against any causal LM and two sample files (no distillation)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kdbench.cli.run import LIST_HELP
from kdbench.core.params import parse_specs

_FILE = click.Path(path_type=Path, dir_okay=True)  # existence and format are checked with clearer messages


@click.command()
@click.option("--model", required=True, help="A causal LM: a directory written by save_pretrained (safetensors, "
              "with its tokenizer) or a Hugging Face name.")
@click.option("--members", required=True, type=_FILE, help="Member samples: JSONL (text, or instruction/context/"
              "response) or plain text, one per line.")
@click.option("--nonmembers", required=True, type=_FILE, help="Non-member samples, same formats.")
@click.option("--attack", "attacks", multiple=True, required=True, help=f"Attacks. {LIST_HELP}")
@click.option("--base", help="The model's un-fine-tuned base (path, hub name or builtin:<preset>): ref's default "
              "reference and lira's shadow base.")
@click.option("--reference-text", type=_FILE, help="Same-domain text in neither file nor the model's training data: "
              "dc-pdd's token frequencies and recall's prefixes.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--scores-out", type=click.Path(path_type=Path, dir_okay=False), help="Write per-sample scores (JSONL).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the bootstrap.")
@click.option("--bootstrap", default=1000, show_default=True, type=click.IntRange(min=10),
              help="Bootstrap resamples for the AUC CI.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--max-tokens", default=512, show_default=True, type=click.IntRange(min=2),
              help="Longest sample in tokens (capped at the model's context).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--bos", type=click.Choice(["tokenizer", "prepend"]), default="tokenizer", show_default=True,
              help="Plain texts: encoded as tokenizer(text) encodes them, first token unscored (MIMIR's convention), "
              "or 'prepend': the tokenizer's BOS first and every text token scored.")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code from the hub (off by default).")
def audit(
    model: str, members: Path, nonmembers: Path, attacks: tuple[str, ...], base: str | None,
    reference_text: Path | None, as_json: bool, scores_out: Path | None, seed: int, bootstrap: int, batch_size: int,
    max_tokens: int, device: str, bos: str, trust_remote_code: bool,
) -> None:
    """Membership inference against MODEL: e.g. `kdbench audit --model DIR --members m.jsonl --nonmembers n.jsonl
    --attack loss,zlib,mink++`. Scores: higher = more likely member; AUC is never flipped."""
    from kdbench.analysis.audit import AuditConfig, run_audit
    from kdbench.cli.reporter import RichReporter
    from kdbench.core.cache import atomic_write_text
    from kdbench.core.errors import OutputError
    from kdbench.core.progress import NullReporter
    from kdbench.core.registry import get_registry
    from kdbench.evaluation.metrics import resolution_note, resolves

    err = Console(stderr=True, highlight=False)
    inputs = {"--members": members, "--nonmembers": nonmembers, "--reference-text": reference_text}
    if scores_out is not None:
        for option, path in inputs.items():
            if path is not None and _same_file(scores_out, path):
                raise OutputError(f"--scores-out {scores_out} is the {option} file: writing the scores would "
                                  "overwrite an input. Choose another --scores-out.")
    if _same_file(members, nonmembers):
        err.print(f"[yellow]Warning:[/] --members and --nonmembers are the same file ({escape(str(members))}): every "
                  "sample is both a member and a non-member, so no attack can tell them apart (AUC 0.5 by "
                  "construction).", soft_wrap=True)
    config = AuditConfig(
        model=model, members=members, nonmembers=nonmembers, attacks=parse_specs(attacks), base=base,
        reference_text=reference_text, seed=seed, bootstrap=bootstrap, batch_size=batch_size, max_tokens=max_tokens,
        device=device, trust_remote_code=trust_remote_code, bos=bos,
    )
    result = run_audit(config, get_registry(), reporter=NullReporter() if as_json else RichReporter(err))
    for warning in result.warnings:
        err.print(f"[yellow]Warning:[/] {escape(warning)}", soft_wrap=True)
    if scores_out is not None:
        try:
            atomic_write_text(scores_out, result.scores_jsonl())
        except OSError as exc:
            raise OutputError(f"Cannot write the scores to {scores_out} ({exc.strerror or exc}).") from exc
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    table = Table(title=f"kdbench audit of {escape(model)} (AUC: 0.5 = chance; higher = more leakage)",
                  title_justify="left")
    for column in ("attack", "AUC [95% CI]", "TPR@0.1%", "TPR@1%", "TPR@5%", "bal. acc."):
        table.add_column(column, justify="left" if column == "attack" else "right")
    for label, m in result.attacks.items():
        low = [f"{tpr:.3f}" + ("" if resolves(fpr, m.n_nonmembers) else "*")
               for fpr, tpr in ((0.001, m.tpr_at_01pct_fpr), (0.01, m.tpr_at_1pct_fpr))]
        table.add_row(escape(label), f"{m.auc:.3f} [{m.auc_ci[0]:.2f}, {m.auc_ci[1]:.2f}]", *low,
                      f"{m.tpr_at_5pct_fpr:.3f}", f"{m.balanced_accuracy:.3f}")
    console = Console(highlight=False)
    console.print(table)
    console.print(
        f"{result.n_members} members, {result.n_nonmembers} non-members; FPR resolution 1/{result.n_nonmembers} = "
        f"{1 / result.n_nonmembers:.4f}. {result.cache_builds} artifacts computed, {result.cache_hits} reused.\n"
        + resolution_note(result.n_nonmembers, "more lines in --nonmembers")
    )


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (links and relative forms resolved); a file not there yet is no input."""
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()
