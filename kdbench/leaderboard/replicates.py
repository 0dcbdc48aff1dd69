"""Replicates are seeds of a configuration, not runs: check that runs sharing a seed agree.

Two runs of one seed of one cell (a cached student scored again, two results files of one study) measure the same
model; the leaderboard counts that seed once (``ranking.by_seed``). That is only honest when their records agree,
so this module compares them before ranking: the same trained student (``provenance.model_key``) and utility for
the seed, and, per attack, the same measurement — every field except those that describe the run itself. A
disagreement is an error naming both runs, never a silent average.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kdbench.core.errors import KdbenchError
from kdbench.leaderboard.ranking import CellKey, Record, attack_key, canonical, cell_key, replicate_of

# Fields that describe the run that produced a record, not what it measured.
RUN_FIELDS = frozenset({"run_id", "kdbench_version", "git_commit", "provenance"})
# ...except these provenance fields, which identify the measured model and data.
MEASURED_PROVENANCE = ("model_key", "split_hashes")
# Per seed, whatever the attack: the trained student and its utility.
MODEL_FIELDS = ("model_key", "rouge_l", "rouge_l_ci")


class ReplicateConflictError(KdbenchError):
    """Two runs report different results for one seed of one configuration."""


@dataclass(frozen=True)
class SharedSeed:
    """A seed of a cell found in several runs whose records agree: counted once."""

    cell: CellKey
    seed: int
    runs: tuple[str, ...]


def measurement(record: Record) -> str:
    """What a record measured, without the run that measured it (canonical JSON)."""
    provenance = record.get("provenance") or {}
    kept: dict[str, Any] = {k: v for k, v in record.items() if k not in RUN_FIELDS}
    kept["provenance"] = {k: provenance.get(k) for k in MEASURED_PROVENANCE}
    return canonical(kept)


def _model(record: Record) -> dict[str, Any]:
    values = {name: record.get(name) for name in MODEL_FIELDS}
    values["model_key"] = (record.get("provenance") or {}).get("model_key")
    return values


def check_replicates(records: Iterable[Record]) -> list[SharedSeed]:
    """The seeds present in more than one run; raise ReplicateConflictError where those runs disagree."""
    by_seed: dict[tuple[CellKey, int], list[Record]] = defaultdict(list)
    for record in records:
        by_seed[(cell_key(record), replicate_of(record))].append(record)
    shared = []
    for (cell, seed), group in by_seed.items():
        runs = tuple(sorted({str(r["run_id"]) for r in group}))
        if len(runs) < 2:
            continue
        _agree(cell, seed, group, lambda r: canonical(_model(r)), "trained student or utility")
        by_attack: dict[str, list[Record]] = defaultdict(list)
        for record in group:
            by_attack[attack_key(record)].append(record)
        for attack, same in by_attack.items():
            _agree(cell, seed, same, measurement, f"attack {same[0]['attack']} ({attack})")
        shared.append(SharedSeed(cell, seed, runs))
    return shared


def _agree(cell: CellKey, seed: int, records: Sequence[Record], view: Callable[[Record], str], what: str) -> None:
    first = records[0]
    for other in records[1:]:
        if view(other) != view(first):
            raise ReplicateConflictError(
                f"Runs {first['run_id']!r} and {other['run_id']!r} disagree on the {what} of seed {seed} of "
                f"{cell.task}/{cell.protocol} {cell.name}{_differing(view, first, other)}. One seed of one "
                "configuration is one replicate: build from one of the two runs, or rerun one with another seed."
            )


def _differing(view: Callable[[Record], str], a: Record, b: Record) -> str:
    """' (fields: auc, roc)' — the top-level fields whose values differ, to help find the cause."""
    left, right = json.loads(view(a)), json.loads(view(b))
    names = sorted(k for k in left.keys() | right.keys() if left.get(k) != right.get(k))
    return f" (fields: {', '.join(names)})" if names else ""
