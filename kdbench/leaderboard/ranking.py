"""Leaderboard ranking: merge records, aggregate replicates, rank cells on the privacy-utility frontier.

Pure logic (no rendering) so the rule that decides who is on top can be tested on its own (DESIGN.md §6).

Identity. Two records measure the same thing when they agree on everything that determines the measurement:
``run_id, seed, task, protocol, target, distiller, defense, model, distiller_params, defense_params, attack,
attack_params``. Later records with the same identity replace earlier ones; identical records are dropped.

Cells. A ranked entry is a student cell: (task, protocol, distiller, defense) plus its configuration (student
model and distiller/defense parameters), so two settings of one defense (say two DP budgets) are never
averaged together. A replicate is one (run_id, seed) of a cell.

Aggregation across replicates. Per attack: AUC, TPRs and any other numeric metric are the mean over
replicates; the AUC CI is the mean of the replicates' bootstrap bounds; the min-max spread across replicates
is kept beside it. Utility is the mean over replicates of the student's ROUGE-L (its CI likewise, when records
carry one). Risk is the strongest attack: the highest mean AUC (ties: higher TPR@1%FPR, then name).

Ranking, per (task, protocol) — protocols are never mixed (METHODS.md §1). Pareto layers on (utility ↑,
risk ↓): layer 1 is the frontier, layer k+1 the frontier of what is left. Within a layer: lower risk first,
then higher utility, then the entry's name. Teacher and no-KD baseline cells are reference points, not
ranked.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

Record = dict[str, Any]

UNSPECIFIED_PROTOCOL = "unspecified"
REFERENCE_TARGETS = ("teacher", "baseline")
CONFIG_FIELDS = ("model", "distiller_params", "defense_params")
# Fields that say *what* was measured; every other numeric field is a metric to aggregate.
IDENTITY_FIELDS = (
    "run_id",
    "seed",
    "task",
    "protocol",
    "target",
    "distiller",
    "defense",
    *CONFIG_FIELDS,
    "attack",
    "attack_params",
)
NON_METRIC_FIELDS = frozenset(
    {
        *IDENTITY_FIELDS,
        "auc",
        "rouge_l",
        "n_members",
        "n_nonmembers",
        "schema_version",
        "tpr_at_1pct_fpr",
        "tpr_at_0.1pct_fpr",
    }
)


def canonical(value: Any) -> str:
    """A stable text form of a JSON value: the basis of identity and exact-duplicate checks."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def protocol_of(record: Record) -> str:
    """A record's protocol; records that omit it are kept apart rather than mixed into a named protocol."""
    return str(record.get("protocol") or UNSPECIFIED_PROTOCOL)


def identity(record: Record) -> str:
    """What a record measures (not its numbers); see the module docstring."""
    values = {name: record.get(name) for name in IDENTITY_FIELDS}
    values["protocol"] = protocol_of(record)
    return canonical(values)


@dataclass
class MergeResult:
    """Merged records and what merging did, for the build report."""

    records: list[Record]
    exact_duplicates: int = 0
    replaced: int = 0


def merge_records(records: Iterable[Record]) -> MergeResult:
    """Drop identical records and let later records replace earlier ones with the same identity."""
    merged: dict[str, Record] = {}
    result = MergeResult(records=[])
    for record in records:
        key = identity(record)
        previous = merged.get(key)
        if previous is not None:
            if canonical(previous) == canonical(record):
                result.exact_duplicates += 1
                continue
            result.replaced += 1
        merged[key] = record
    result.records = list(merged.values())
    return result


# ----------------------------------------------------------------------------------------------- aggregation


@dataclass(frozen=True)
class Estimate:
    """A mean over replicates with its (mean bootstrap) CI and the min-max spread across replicates."""

    value: float
    ci: tuple[float, float] | None
    spread: tuple[float, float]
    n: int


def estimate(values: Sequence[float], cis: Sequence[Sequence[float] | None] = ()) -> Estimate:
    """Aggregate replicate values; the CI is given only when every replicate carries one."""
    ci: tuple[float, float] | None = None
    if cis and all(c is not None and len(c) == 2 for c in cis):
        ci = (fmean(float(c[0]) for c in cis if c), fmean(float(c[1]) for c in cis if c))
    return Estimate(fmean(values), ci, (min(values), max(values)), len(values))


@dataclass(frozen=True)
class CellKey:
    """What a leaderboard row is: one target of one (task, protocol, distiller, defense, configuration)."""

    task: str
    protocol: str
    target: str
    distiller: str | None
    defense: str | None
    config: str  # canonical JSON of CONFIG_FIELDS

    @property
    def name(self) -> str:
        """The human label; reference cells are named by their target."""
        if self.target != "student":
            return self.target
        return f"{self.distiller or '—'} / {self.defense or 'none'}"

    def config_dict(self) -> dict[str, Any]:
        """The configuration as a dict (model and parameters)."""
        value: dict[str, Any] = json.loads(self.config)
        return value


def cell_key(record: Record) -> CellKey:
    """The cell a record belongs to."""
    config = canonical({name: record.get(name) for name in CONFIG_FIELDS})
    return CellKey(
        record["task"],
        protocol_of(record),
        record["target"],
        record.get("distiller"),
        record.get("defense"),
        config,
    )


@dataclass
class AttackSummary:
    """One attack (name + parameters) against one cell, aggregated over the cell's replicates."""

    attack: str
    params: dict[str, Any]
    auc: Estimate
    tpr_at_1pct_fpr: float
    tpr_at_01pct_fpr: float
    metrics: dict[str, float]
    records: list[Record]
    key: str  # attack identity within a board: ``attack_key`` of its records

    def strength(self) -> tuple[float, float, str]:
        """Sort key for 'strongest': higher AUC, then higher TPR@1%FPR, then name (ascending)."""
        return (-self.auc.value, -self.tpr_at_1pct_fpr, self.key)


def _mean_field(records: Sequence[Record], name: str) -> float:
    return fmean(float(r[name]) for r in records)


def _extra_metrics(records: Sequence[Record]) -> dict[str, float]:
    """Every other numeric top-level field, averaged over the records that have it: no per-attack cases."""
    names = sorted({k for r in records for k, v in r.items() if k not in NON_METRIC_FIELDS and _is_number(v)})
    return {name: fmean(float(r[name]) for r in records if _is_number(r.get(name))) for name in names}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def summarize_attack(records: Sequence[Record]) -> AttackSummary:
    """Aggregate one attack's replicate records (mean values, mean CI bounds)."""
    first = records[0]
    return AttackSummary(
        attack=first["attack"],
        params=dict(first.get("attack_params") or {}),
        auc=estimate([float(r["auc"]) for r in records], [r.get("auc_ci") for r in records]),
        tpr_at_1pct_fpr=_mean_field(records, "tpr_at_1pct_fpr"),
        tpr_at_01pct_fpr=_mean_field(records, "tpr_at_0.1pct_fpr"),
        metrics=_extra_metrics(records),
        records=list(records),
        key=attack_key(first),
    )


def attack_key(record: Record) -> str:
    """An attack's identity within a board: its name and parameters."""
    return canonical([record["attack"], record.get("attack_params") or {}])


def replicate_of(record: Record) -> tuple[str, int]:
    """One replicate of a cell: a run and a seed."""
    return (str(record["run_id"]), int(record["seed"]))


@dataclass
class Cell:
    """All records of one cell, aggregated: utility, attacks (strongest first) and risk."""

    key: CellKey
    utility: Estimate
    attacks: list[AttackSummary]
    records: list[Record]

    @property
    def strongest(self) -> AttackSummary:
        """The attack that defines the cell's risk."""
        return self.attacks[0]

    @property
    def risk(self) -> float:
        """Mean AUC of the strongest attack."""
        return self.strongest.auc.value

    @property
    def replicates(self) -> list[tuple[str, int]]:
        """The (run_id, seed) pairs behind this cell, sorted."""
        return sorted({replicate_of(r) for r in self.records})


def _utility(records: Sequence[Record]) -> Estimate:
    """Mean over replicates of ROUGE-L (all records of a replicate describe the same model)."""
    by_replicate: dict[tuple[str, int], list[Record]] = defaultdict(list)
    for record in records:
        by_replicate[replicate_of(record)].append(record)
    values = [_mean_field(group, "rouge_l") for group in by_replicate.values()]
    cis = [
        next((r["rouge_l_ci"] for r in group if r.get("rouge_l_ci")), None) for group in by_replicate.values()
    ]
    return estimate(values, cis)


def summarize_cell(key: CellKey, records: Sequence[Record]) -> Cell:
    """Aggregate a cell's records: one AttackSummary per attack variant, strongest first."""
    by_attack: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_attack[attack_key(record)].append(record)
    attacks = sorted((summarize_attack(group) for group in by_attack.values()), key=AttackSummary.strength)
    return Cell(key, _utility(records), attacks, list(records))


def group_cells(records: Iterable[Record]) -> list[Cell]:
    """Every cell of the records, aggregated, in first-seen order."""
    groups: dict[CellKey, list[Record]] = defaultdict(list)
    for record in records:
        groups[cell_key(record)].append(record)
    return [summarize_cell(key, group) for key, group in groups.items()]


# ------------------------------------------------------------------------------------------------- ranking


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """(utility, risk) ``a`` dominates ``b``: no worse on both, strictly better on one. Exact ties do not."""
    return a[0] >= b[0] and a[1] <= b[1] and a != b


def pareto_layers(points: Sequence[tuple[float, float]]) -> list[int]:
    """Pareto layer (1 = frontier) of each (utility, risk) point; O(n log n + n·layers).

    Points are visited by risk ascending, utility descending, so every dominator of a point is visited before
    it. Within a layer, in that order, utility never decreases, so a layer dominates the new point iff its
    best (highest-utility, then lowest-risk) member does; and being dominated by layer k implies being
    dominated by every layer before it, so the point's layer is the first one that does not dominate it.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][0]))
    best: list[tuple[float, float]] = []  # per layer: (max utility, lowest risk at that utility)
    layers = [0] * len(points)
    for i in order:
        layer = _first_non_dominating(best, points[i])
        if layer == len(best):
            best.append(points[i])
        elif points[i][0] > best[layer][0]:
            best[layer] = points[i]
        layers[i] = layer + 1
    return layers


def _first_non_dominating(best: Sequence[tuple[float, float]], point: tuple[float, float]) -> int:
    """Index of the first layer whose best member does not dominate ``point`` (len(best) if all do)."""
    for k, top in enumerate(best):
        if not dominates(top, point):
            return k
    return len(best)


@dataclass
class RankedEntry:
    """A student cell with its Pareto layer and its rank within its (task, protocol) board."""

    cell: Cell
    layer: int
    rank: int = 0

    @property
    def on_frontier(self) -> bool:
        return self.layer == 1


def tie_break(entry: RankedEntry) -> tuple[int, float, float, str, str, str]:
    """Order within and across layers: layer, lower risk, higher utility, then name and configuration."""
    key = entry.cell.key
    return (
        entry.layer,
        entry.cell.risk,
        -entry.cell.utility.value,
        key.distiller or "",
        key.defense or "",
        key.config,
    )


def rank_cells(cells: Sequence[Cell]) -> list[RankedEntry]:
    """Rank student cells of one board: Pareto layers, then the documented tie-break; ranks are 1..n."""
    layers = pareto_layers([(c.utility.value, c.risk) for c in cells])
    entries = sorted((RankedEntry(c, layer) for c, layer in zip(cells, layers, strict=True)), key=tie_break)
    for position, entry in enumerate(entries, start=1):
        entry.rank = position
    return entries


@dataclass
class Board:
    """One leaderboard: a task under one protocol, its ranked entries and its reference points."""

    task: str
    protocol: str
    entries: list[RankedEntry] = field(default_factory=list)
    references: list[Cell] = field(default_factory=list)

    @property
    def frontier(self) -> list[RankedEntry]:
        return [e for e in self.entries if e.on_frontier]


def build_boards(records: Iterable[Record]) -> list[Board]:
    """Group records into boards sorted by (task, protocol); rank the students, keep references apart."""
    boards: dict[tuple[str, str], Board] = {}
    students: dict[tuple[str, str], list[Cell]] = defaultdict(list)
    for cell in group_cells(records):
        board_key = (cell.key.task, cell.key.protocol)
        board = boards.setdefault(board_key, Board(*board_key))
        if cell.key.target == "student":
            students[board_key].append(cell)
        else:
            board.references.append(cell)
    for board_key, board in boards.items():
        board.entries = rank_cells(students[board_key])
        board.references.sort(
            key=lambda c: (
                REFERENCE_TARGETS.index(c.key.target) if c.key.target in REFERENCE_TARGETS else 99,
                c.key.config,
            )
        )
    return [boards[k] for k in sorted(boards)]
