"""Leaderboard ranking: merge records, aggregate seeds, rank cells on the privacy-utility frontier.

Pure logic (no rendering) so the rule that decides who is on top can be tested on its own (DESIGN.md §6);
docs/leaderboard.md states it for readers.

Identity. Two records measure the same thing when they agree on everything that determines the measurement:
``run_id, seed, task, protocol, target, distiller, defense, model, distiller_params, defense_params, attack,
attack_params``. Later records with the same identity replace earlier ones; identical records are dropped.

Cells. A ranked entry is a student cell: (task, protocol, distiller, defense) plus its configuration (student
model, teacher model, distiller/defense parameters), so two settings of one defense (say two DP budgets) are
never averaged together. A replicate is a *seed* of a cell, not a run: the same seed in two runs (a cached
student scored again) is one replicate (``kdbench.leaderboard.replicates`` refuses seeds whose runs disagree).

Aggregation across seeds. Per attack: AUC, TPRs and any other numeric metric are the mean over seeds; the AUC CI
is :func:`kdbench.leaderboard.stats.seed_interval` (seed-to-seed and sampling noise); the min-max spread across
seeds is kept beside it. Utility is the mean over seeds of the student's ROUGE-L, its CI likewise.

Ranking, per (task, protocol) — protocols are never mixed (METHODS.md §1):
- risk is the strongest attack *of the board's common set* (the attacks every ranked entry has), by the chosen
  metric: highest mean AUC, or highest mean TPR@1%FPR;
- entries below the utility floor (a fraction of the no-KD baseline's ROUGE-L) are "unusable at this setting":
  ranked after every usable entry and never on the frontier;
- Pareto layers on (utility ↑, risk ↓): layer 1 is the frontier, layer k+1 the frontier of what is left; within
  a layer lower risk first, then higher utility, then the entry's name;
- teacher, no-KD baseline and the cells of the baseline's recipe as a distiller (``sft``) are reference points,
  never ranked.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from statistics import fmean
from typing import Any

from kdbench.leaderboard.stats import seed_interval

Record = dict[str, Any]

UNSPECIFIED_PROTOCOL = "unspecified"
REFERENCE_TARGETS = ("teacher", "baseline")
# The no-KD baseline's recipe packaged as a distiller (plugins/distillers/sft.py): its cells are references.
REFERENCE_DISTILLERS = frozenset({"sft"})
CONFIG_FIELDS = ("model", "distiller_params", "defense_params")
PROVENANCE_CONFIG_FIELDS = ("teacher_model",)  # models a cell depends on that the record keeps in provenance
RISK_METRICS = {"auc": "AUC", "tpr": "TPR@1%FPR"}  # name -> label; both rank "higher = riskier"
DEFAULT_METRIC = "auc"
DEFAULT_UTILITY_FLOOR = 0.5  # fraction of the no-KD baseline's ROUGE-L below which a student is unusable
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
    """A mean over seeds with its CI (``stats.seed_interval``) and the min-max spread across seeds."""

    value: float
    ci: tuple[float, float] | None
    spread: tuple[float, float]
    n: int


def estimate(
    values: Sequence[float],
    cis: Sequence[Sequence[float] | None] = (),
    bounds: tuple[float, float] = (0.0, 1.0),
) -> Estimate:
    """Aggregate one value per seed; the CI accounts for seed-to-seed variance and each seed's own CI."""
    pairs = [(float(c[0]), float(c[1])) if c is not None and len(c) == 2 else None for c in cis]
    return Estimate(fmean(values), seed_interval(values, pairs, bounds), (min(values), max(values)), len(values))


@dataclass(frozen=True)
class CellKey:
    """What a leaderboard row is: one target of one (task, protocol, distiller, defense, configuration)."""

    task: str
    protocol: str
    target: str
    distiller: str | None
    defense: str | None
    config: str  # canonical JSON of config_of(record)

    @property
    def name(self) -> str:
        """The human label; teacher and baseline cells are named by their target."""
        if self.target != "student":
            return self.target
        return f"{self.distiller or '—'} / {self.defense or 'none'}"

    @property
    def is_reference(self) -> bool:
        """Teacher, no-KD baseline, and the baseline's recipe run as a distiller: shown, never ranked."""
        return self.target != "student" or self.distiller in REFERENCE_DISTILLERS

    def config_dict(self) -> dict[str, Any]:
        """The configuration as a dict (models and parameters)."""
        value: dict[str, Any] = json.loads(self.config)
        return value


def config_of(record: Record) -> dict[str, Any]:
    """What a cell's numbers depend on besides its names: models and parameters (teacher only when recorded)."""
    config = {name: record.get(name) for name in CONFIG_FIELDS}
    provenance = record.get("provenance") or {}
    config.update({name: provenance[name] for name in PROVENANCE_CONFIG_FIELDS if name in provenance})
    return config


def cell_key(record: Record) -> CellKey:
    """The cell a record belongs to."""
    return CellKey(
        record["task"],
        protocol_of(record),
        record["target"],
        record.get("distiller"),
        record.get("defense"),
        canonical(config_of(record)),
    )


def replicate_of(record: Record) -> int:
    """A record's replicate within its cell: its seed (one seed run twice is still one replicate)."""
    return int(record["seed"])


def by_seed(records: Iterable[Record]) -> dict[int, list[Record]]:
    """Records grouped by seed, seeds ascending."""
    groups: dict[int, list[Record]] = defaultdict(list)
    for record in records:
        groups[replicate_of(record)].append(record)
    return dict(sorted(groups.items()))


def _seed_means(records: Sequence[Record], name: str) -> list[float]:
    """One value per seed: the mean of that seed's records (identical ones, once replicates are checked)."""
    return [fmean(float(r[name]) for r in group) for group in by_seed(records).values()]


@dataclass
class AttackSummary:
    """One attack (name + parameters) against one cell, aggregated over the cell's seeds."""

    attack: str
    params: dict[str, Any]
    auc: Estimate
    tpr: Estimate  # TPR@1%FPR: mean and spread over seeds; no CI (records carry no sampling CI for it)
    tpr_at_01pct_fpr: float
    metrics: dict[str, float]
    records: list[Record]
    key: str  # attack identity within a board: ``attack_key`` of its records

    @property
    def tpr_at_1pct_fpr(self) -> float:
        return self.tpr.value

    def value(self, metric: str) -> float:
        """The risk metric's value: mean AUC or mean TPR@1%FPR."""
        return self.auc.value if metric == "auc" else self.tpr.value

    def strength(self, metric: str = DEFAULT_METRIC) -> tuple[float, float, str]:
        """Sort key for 'strongest': higher value of ``metric``, then of the other metric, then name."""
        other = "tpr" if metric == "auc" else "auc"
        return (-self.value(metric), -self.value(other), self.key)


def _extra_metrics(records: Sequence[Record]) -> dict[str, float]:
    """Every other numeric top-level field, averaged over the records that have it: no per-attack cases."""
    names = sorted({k for r in records for k, v in r.items() if k not in NON_METRIC_FIELDS and _is_number(v)})
    return {name: fmean(float(r[name]) for r in records if _is_number(r.get(name))) for name in names}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def summarize_attack(records: Sequence[Record]) -> AttackSummary:
    """Aggregate one attack's records over seeds."""
    first = records[0]
    seeds = by_seed(records)
    return AttackSummary(
        attack=first["attack"],
        params=dict(first.get("attack_params") or {}),
        auc=estimate(_seed_means(records, "auc"), [group[0].get("auc_ci") for group in seeds.values()]),
        tpr=estimate(_seed_means(records, "tpr_at_1pct_fpr")),
        tpr_at_01pct_fpr=fmean(_seed_means(records, "tpr_at_0.1pct_fpr")),
        metrics=_extra_metrics([group[0] for group in seeds.values()]),
        records=list(records),
        key=attack_key(first),
    )


def attack_key(record: Record) -> str:
    """An attack's identity within a board: its name and parameters."""
    return canonical([record["attack"], record.get("attack_params") or {}])


@dataclass
class Cell:
    """All records of one cell, aggregated: utility and every attack (strongest by AUC first)."""

    key: CellKey
    utility: Estimate
    attacks: list[AttackSummary]
    records: list[Record]

    @property
    def strongest(self) -> AttackSummary:
        """The strongest of all the cell's attacks by AUC (the board's risk uses its common set instead)."""
        return self.attacks[0]

    @property
    def attack_keys(self) -> frozenset[str]:
        return frozenset(a.key for a in self.attacks)

    def strongest_of(self, keys: Iterable[str], metric: str = DEFAULT_METRIC) -> AttackSummary | None:
        """The strongest attack among ``keys`` by ``metric``; None when the cell has none of them."""
        wanted = set(keys)
        candidates = [a for a in self.attacks if a.key in wanted]
        return min(candidates, key=lambda a: a.strength(metric)) if candidates else None

    @property
    def replicates(self) -> list[int]:
        """The seeds behind this cell, ascending."""
        return list(by_seed(self.records))


def _utility(records: Sequence[Record]) -> Estimate:
    """Mean over seeds of ROUGE-L (all records of a seed describe the same model)."""
    seeds = by_seed(records)
    cis = [next((r["rouge_l_ci"] for r in group if r.get("rouge_l_ci")), None) for group in seeds.values()]
    return estimate(_seed_means(records, "rouge_l"), cis, (0.0, 100.0))


def summarize_cell(key: CellKey, records: Sequence[Record]) -> Cell:
    """Aggregate a cell's records: one AttackSummary per attack variant, strongest (by AUC) first."""
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


def common_attacks(cells: Iterable[Cell]) -> frozenset[str]:
    """The attacks every one of ``cells`` has (empty for no cells)."""
    sets = [c.attack_keys for c in cells]
    return frozenset.intersection(*sets) if sets else frozenset()


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
    """A student cell with its risk on the board's common attacks, its Pareto layer and its rank.

    Layers are counted separately for usable and unusable entries (both start at 1); every usable entry ranks
    before every unusable one, and only usable entries are on the frontier.
    """

    cell: Cell
    attack: AttackSummary  # the strongest attack of the common set by ``metric``: the entry's risk
    metric: str = DEFAULT_METRIC
    usable: bool = True
    layer: int = 0
    rank: int = 0

    @property
    def risk(self) -> float:
        return self.attack.value(self.metric)

    @property
    def on_frontier(self) -> bool:
        return self.usable and self.layer == 1


def tie_break(entry: RankedEntry) -> tuple[bool, int, float, float, str, str, str]:
    """Order: usable first, then layer, lower risk, higher utility, then name and configuration."""
    key = entry.cell.key
    return (
        not entry.usable,
        entry.layer,
        entry.risk,
        -entry.cell.utility.value,
        key.distiller or "",
        key.defense or "",
        key.config,
    )


def rank_cells(
    cells: Sequence[Cell],
    metric: str = DEFAULT_METRIC,
    common: Iterable[str] | None = None,
    usable: Sequence[bool] | None = None,
) -> list[RankedEntry]:
    """Rank student cells of one board on ``common`` (default: the attacks all of them have); ranks are 1..n.

    Cells without any attack of ``common`` cannot be compared and are left out; ``usable`` (default: all) marks
    the cells above the utility floor.
    """
    keys = common_attacks(cells) if common is None else frozenset(common)
    flags = list(usable) if usable is not None else [True] * len(cells)
    entries = []
    for cell, ok in zip(cells, flags, strict=True):
        attack = cell.strongest_of(keys, metric)
        if attack is not None:
            entries.append(RankedEntry(cell, attack, metric, ok))
    for group in (True, False):
        members = [e for e in entries if e.usable is group]
        layers = pareto_layers([(e.cell.utility.value, e.risk) for e in members])
        for entry, layer in zip(members, layers, strict=True):
            entry.layer = layer
    entries.sort(key=tie_break)
    for position, entry in enumerate(entries, start=1):
        entry.rank = position
    return entries


@dataclass(frozen=True)
class DefenseCost:
    """What a defense costs and what it buys, against the same distiller and configuration undefended on the
    same board: differences of the two entries' shown values (defended minus undefended), so a negative
    ``utility`` is ROUGE-L lost and a negative ``risk`` is privacy bought back."""

    undefended: CellKey
    utility: float
    risk: float
    same_seeds: bool  # False: the two entries were measured on different seeds, compare with care


def _without_defense(key: CellKey) -> tuple[str, str, str, str | None, str]:
    """A cell's identity with its defense and the defense's parameters left out."""
    config = key.config_dict()
    config.pop("defense_params", None)
    return key.task, key.protocol, key.target, key.distiller, canonical(config)


def defense_costs(entries: Sequence[RankedEntry]) -> dict[CellKey, DefenseCost]:
    """Each defended entry's cost against the entry of the same ranking that differs only by having no defense."""
    undefended = {_without_defense(e.cell.key): e for e in entries if e.cell.key.defense in (None, "none")}
    costs = {}
    for entry in entries:
        if entry.cell.key.defense in (None, "none"):
            continue
        plain = undefended.get(_without_defense(entry.cell.key))
        if plain is not None:
            costs[entry.cell.key] = DefenseCost(
                plain.cell.key,
                entry.cell.utility.value - plain.cell.utility.value,
                entry.risk - plain.risk,
                entry.cell.replicates == plain.cell.replicates,
            )
    return costs


@dataclass(frozen=True)
class UtilityFloor:
    """Students below ``fraction`` × the no-KD baseline's ROUGE-L are unusable at this setting."""

    fraction: float
    baseline: Cell | None  # the cell whose utility defines the floor (None: no baseline, no floor)

    @property
    def threshold(self) -> float | None:
        if self.baseline is None or self.fraction <= 0:
            return None
        return self.fraction * self.baseline.utility.value

    def admits(self, cell: Cell) -> bool:
        threshold = self.threshold
        return threshold is None or cell.utility.value >= threshold


def _floor_baseline(references: Sequence[Cell]) -> Cell | None:
    """The board's no-KD baseline: the ``baseline`` target, else the ``sft`` distiller without a defense."""
    for wanted in (
        lambda k: k.target == "baseline",
        lambda k: k.distiller in REFERENCE_DISTILLERS and k.defense in (None, "none"),
    ):
        found = [c for c in references if wanted(c.key)]
        if found:
            return max(found, key=lambda c: c.utility.n)  # the best-measured one when several
    return None


@dataclass
class Board:
    """One leaderboard: a task under one protocol, its ranked entries and its reference points."""

    task: str
    protocol: str
    metric: str = DEFAULT_METRIC  # the ranking shown first
    rankings: dict[str, list[RankedEntry]] = field(default_factory=dict)  # per risk metric
    references: list[Cell] = field(default_factory=list)
    common: frozenset[str] = frozenset()  # attack keys every student entry has
    attacks: frozenset[str] = frozenset()  # attack keys any student entry has
    unranked: list[Cell] = field(default_factory=list)  # students with none of the common attacks
    floor: UtilityFloor = field(default_factory=lambda: UtilityFloor(DEFAULT_UTILITY_FLOOR, None))

    @property
    def entries(self) -> list[RankedEntry]:
        """The ranking by the board's default metric."""
        return self.rankings.get(self.metric, [])

    @property
    def frontier(self) -> list[RankedEntry]:
        return [e for e in self.entries if e.on_frontier]

    @property
    def students(self) -> list[Cell]:
        return [e.cell for e in self.entries] + self.unranked

    def missing(self, cell: Cell) -> list[str]:
        """Attack keys other entries of the board have and ``cell`` lacks."""
        return sorted(self.attacks - cell.attack_keys)

    def reference_attack(self, cell: Cell, metric: str = DEFAULT_METRIC) -> AttackSummary:
        """A reference's risk: the strongest of the common attacks, else (not comparable) of its own."""
        found = cell.strongest_of(self.common, metric)
        return found or min(cell.attacks, key=lambda a: a.strength(metric))


def _reference_order(cell: Cell) -> tuple[int, str, str]:
    target = cell.key.target
    return (REFERENCE_TARGETS.index(target) if target in REFERENCE_TARGETS else 99, cell.key.name, cell.key.config)


def build_boards(
    records: Iterable[Record], metric: str = DEFAULT_METRIC, floor: float = DEFAULT_UTILITY_FLOOR
) -> list[Board]:
    """Group records into boards sorted by (task, protocol); rank the students both ways, keep references apart."""
    if metric not in RISK_METRICS:
        raise ValueError(f"unknown risk metric {metric!r}; expected one of {', '.join(RISK_METRICS)}")
    boards: dict[tuple[str, str], Board] = {}
    students: dict[tuple[str, str], list[Cell]] = defaultdict(list)
    for cell in group_cells(records):
        board_key = (cell.key.task, cell.key.protocol)
        board = boards.setdefault(board_key, Board(*board_key, metric=metric))
        if cell.key.is_reference:
            board.references.append(cell)
        else:
            students[board_key].append(cell)
    for board_key, board in boards.items():
        cells = students[board_key]
        board.references.sort(key=_reference_order)
        board.floor = UtilityFloor(floor, _floor_baseline(board.references))
        board.common = common_attacks(cells)
        board.attacks = frozenset().union(*(c.attack_keys for c in cells))
        usable = [board.floor.admits(c) for c in cells]
        board.rankings = {m: rank_cells(cells, m, board.common, usable) for m in RISK_METRICS}
        ranked = {e.cell.key for e in board.entries}
        board.unranked = [c for c in cells if c.key not in ranked]
    return [boards[k] for k in sorted(boards)]
