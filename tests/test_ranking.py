"""The leaderboard's ranking rule (kdbench.leaderboard.ranking): Pareto layers, tie-break, aggregation, merging."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from kdbench.leaderboard.completion import gaps
from kdbench.leaderboard.ranking import (
    build_boards,
    dominates,
    group_cells,
    merge_records,
    pareto_layers,
    rank_cells,
)
from kdbench.leaderboard.replicates import ReplicateConflictError, check_replicates
from kdbench.leaderboard.stats import seed_interval
from tests.helpers import make_record


def cells_of(*points: tuple[str, float, float]) -> list[Any]:
    """Student cells named by distiller from (name, utility, risk) triples."""
    return group_cells([make_record(name, auc=risk, rouge=utility) for name, utility, risk in points])


def names(entries: list[Any]) -> list[str]:
    return [e.cell.key.distiller for e in entries]


# --------------------------------------------------------------------------------------------- Pareto layers


def test_empty_input_has_no_layers_and_no_boards() -> None:
    assert pareto_layers([]) == []
    assert rank_cells([]) == []
    assert build_boards([]) == []


def test_single_entry_is_the_frontier() -> None:
    [entry] = rank_cells(cells_of(("kd", 20.0, 0.6)))
    assert (entry.layer, entry.rank, entry.on_frontier) == (1, 1, True)


def test_dominated_points_fall_to_later_layers() -> None:
    # a: best on both; b, c trade off; d is dominated by b and c; e by everyone.
    entries = rank_cells(
        cells_of(("e", 10.0, 0.9), ("d", 15.0, 0.75), ("c", 25.0, 0.7), ("b", 22.0, 0.6), ("a", 30.0, 0.5))
    )
    layers = {e.cell.key.distiller: e.layer for e in entries}
    assert layers == {"a": 1, "b": 2, "c": 2, "d": 3, "e": 4}
    assert names(entries) == ["a", "b", "c", "d", "e"]  # within layer 2: lower risk first
    assert [e.rank for e in entries] == [1, 2, 3, 4, 5]


def test_frontier_trade_off_is_one_layer_ordered_by_risk() -> None:
    entries = rank_cells(cells_of(("hi-util", 30.0, 0.8), ("lo-risk", 10.0, 0.5), ("mid", 20.0, 0.65)))
    assert {e.layer for e in entries} == {1}
    assert names(entries) == ["lo-risk", "mid", "hi-util"]


def test_exact_ties_share_a_layer_and_break_by_name() -> None:
    entries = rank_cells(cells_of(("zeta", 20.0, 0.6), ("alpha", 20.0, 0.6), ("worse", 19.0, 0.6)))
    assert [(e.cell.key.distiller, e.layer) for e in entries] == [("alpha", 1), ("zeta", 1), ("worse", 2)]


def test_equal_risk_higher_utility_dominates_and_equal_utility_lower_risk_dominates() -> None:
    assert dominates((20.0, 0.6), (19.0, 0.6))
    assert dominates((20.0, 0.5), (20.0, 0.6))
    assert not dominates((20.0, 0.6), (20.0, 0.6))
    assert pareto_layers([(19.0, 0.6), (20.0, 0.6), (20.0, 0.5)]) == [3, 2, 1]


def test_rank_orders_by_layer_before_risk() -> None:
    # Within one layer equal risk means an exact tie (otherwise one dominates), so risk then name decide
    # there; across layers the layer wins even over lower risk.
    entries = rank_cells(cells_of(("b", 25.0, 0.7), ("a", 15.0, 0.5), ("c", 20.0, 0.7), ("d", 14.0, 0.55)))
    assert [(e.cell.key.distiller, e.layer) for e in entries] == [("a", 1), ("b", 1), ("d", 2), ("c", 2)]


def _brute_force_layers(points: list[tuple[float, float]]) -> list[int]:
    """Reference: peel off the non-dominated set repeatedly."""
    layers = [0] * len(points)
    remaining = set(range(len(points)))
    layer = 0
    while remaining:
        layer += 1
        front = {i for i in remaining if not any(dominates(points[j], points[i]) for j in remaining)}
        for i in front:
            layers[i] = layer
        remaining -= front
    return layers


@pytest.mark.parametrize("seed", range(25))
def test_layers_match_brute_force_including_many_ties(seed: int) -> None:
    rng = random.Random(seed)
    points = [(float(rng.randint(0, 6)), rng.randint(0, 6) / 10) for _ in range(rng.randint(1, 40))]
    assert pareto_layers(points) == _brute_force_layers(points)


# --------------------------------------------------------------------------------------------- aggregation


def test_risk_is_the_strongest_attack_and_seeds_are_averaged() -> None:
    records = [
        make_record(attack="loss", auc=0.60, rouge=20.0, seed=0, run_id="r0", rouge_l_ci=None),
        make_record(attack="loss", auc=0.70, rouge=22.0, seed=1, run_id="r1", rouge_l_ci=None),
        make_record(attack="mink", auc=0.62, rouge=20.0, seed=0, run_id="r0", rouge_l_ci=None),
        make_record(attack="mink", auc=0.64, rouge=22.0, seed=1, run_id="r1", rouge_l_ci=None),
    ]
    [cell] = group_cells(records)
    assert cell.strongest.attack == "loss"
    assert cell.strongest.auc.value == pytest.approx(0.65)
    assert cell.strongest.auc.spread == (0.60, 0.70)
    assert cell.strongest.auc.ci == pytest.approx((0.55, 0.75))  # two seeds: envelope of [.55, .65], [.65, .75]
    assert cell.utility.value == pytest.approx(21.0)
    assert cell.utility.ci is None  # no record carried rouge_l_ci
    assert cell.replicates == [0, 1]


def test_other_numeric_fields_are_aggregated_generically() -> None:
    records = [
        make_record(balanced_accuracy=0.6, seed=0, run_id="a"),
        make_record(balanced_accuracy=0.8, seed=1, run_id="b"),
        make_record(seed=2, run_id="c", some_new_metric=3),
    ]
    [cell] = group_cells(records)
    assert cell.strongest.metrics == pytest.approx({"balanced_accuracy": 0.7, "some_new_metric": 3.0})


def test_different_parameters_are_different_entries() -> None:
    records = [make_record(defense="dp-sgd", defense_params={"dp-sgd": {"epsilon": eps}}) for eps in (1, 8)]
    assert len(group_cells(records)) == 2


def test_references_are_never_ranked() -> None:
    records = [
        make_record(None, None, target="teacher", auc=0.95, rouge=30.0),
        make_record(None, None, target="baseline", auc=0.5, rouge=35.0),  # would dominate the student if ranked
        make_record("kd", "none", auc=0.6, rouge=20.0),
    ]
    [board] = build_boards(records)
    assert names(board.entries) == ["kd"]
    assert [c.key.target for c in board.references] == ["teacher", "baseline"]


def test_boards_separate_tasks_and_protocols() -> None:
    records = [make_record(task="a"), make_record(task="b"), make_record(task="a", protocol="private")]
    assert [(b.task, b.protocol) for b in build_boards(records)] == [
        ("a", "private"),
        ("a", "public"),
        ("b", "public"),
    ]


# --------------------------------------------------------------------------------------------- merging


def test_merge_drops_identical_records_and_later_ones_replace_earlier() -> None:
    first, updated = make_record(auc=0.6), make_record(auc=0.7)
    other_seed = make_record(auc=0.6, seed=1)
    result = merge_records([first, dict(first), updated, other_seed])
    assert result.exact_duplicates == 1
    assert result.replaced == 1
    assert [r["auc"] for r in result.records] == [0.7, 0.6]


# ------------------------------------------------------------------------- like with like (issue 20)
# Each test is built to catch one way a board compared unlike things; the comment says which wrong rule fails it.


def json_name(key: str) -> str:
    """An attack key's attack name."""
    return str(json.loads(key)[0])


def ranked(board: Any, metric: str = "auc") -> list[tuple[str, int, bool]]:
    """(entry name, rank, usable) in rank order."""
    return [(e.cell.key.name, e.rank, e.usable) for e in board.rankings[metric]]


def test_risk_is_taken_over_the_attacks_every_entry_has() -> None:
    # kd/none ran two attacks, its strongest (mink 0.90) absent from kd/redlist, which only ran loss. On loss alone
    # kd/none (0.60) beats kd/redlist (0.65) at equal utility. "Strongest of whatever ran" ranks redlist first.
    records = [
        make_record("kd", "none", attack="loss", auc=0.60),
        make_record("kd", "none", attack="mink", auc=0.90),
        make_record("kd", "redlist", attack="loss", auc=0.65),
    ]
    [board] = build_boards(records)
    assert [json_name(k) for k in board.common] == ["loss"]
    assert ranked(board) == [("kd / none", 1, True), ("kd / redlist", 2, True)]
    assert board.entries[0].attack.attack == "loss" and board.entries[0].risk == pytest.approx(0.60)
    redlist = board.entries[1].cell
    assert [json_name(k) for k in board.missing(redlist)] == ["mink"]
    [gap] = gaps([board])
    assert gap.entries == ("kd / redlist",) and gap.attacks == ("mink",)
    assert "--distiller kd --defense redlist --attack mink --seed 0" in gap.commands[0]


def test_a_board_with_no_common_attack_ranks_nothing_and_lists_the_entries() -> None:
    records = [make_record("kd", "none", attack="loss"), make_record("kd", "redlist", attack="mink")]
    [board] = build_boards(records)
    assert board.common == frozenset() and board.entries == []
    assert sorted(c.key.name for c in board.unranked) == ["kd / none", "kd / redlist"]
    assert len(gaps([board])) == 2


def test_sft_cells_and_the_baseline_are_references_never_ranked() -> None:
    # sft is the baseline's recipe: ranking it would put the no-KD baseline first (it has the lowest risk here).
    records = [
        make_record(None, None, target="baseline", auc=0.50, rouge=30.0),
        make_record("sft", "none", auc=0.50, rouge=30.0),
        make_record("sft", "dp-sgd", auc=0.49, rouge=25.0),
        make_record("kd", "none", auc=0.60, rouge=28.0),
    ]
    [board] = build_boards(records)
    assert ranked(board) == [("kd / none", 1, True)]
    assert [c.key.name for c in board.references] == ["baseline", "sft / dp-sgd", "sft / none"]
    assert board.unranked == []


def test_students_below_the_utility_floor_rank_after_every_usable_one() -> None:
    # Baseline ROUGE-L 20, floor 0.5 -> 10. kd/dp-sgd (0.0) and kd/nonorm (9.9) have the lowest risks and nothing
    # dominates them, so without a floor they would lead the board; kd/bottleneck sits exactly at the floor.
    records = [
        make_record(None, None, target="baseline", auc=0.5, rouge=20.0),
        make_record("kd", "dp-sgd", auc=0.50, rouge=0.0),
        make_record("kd", "nonorm", auc=0.55, rouge=9.9),
        make_record("kd", "bottleneck", auc=0.60, rouge=10.0),
        make_record("kd", "none", auc=0.70, rouge=18.0),
    ]
    [board] = build_boards(records)
    assert board.floor.threshold == pytest.approx(10.0)
    assert ranked(board) == [
        ("kd / bottleneck", 1, True),
        ("kd / none", 2, True),
        ("kd / dp-sgd", 3, False),
        ("kd / nonorm", 4, False),
    ]
    assert [e.cell.key.name for e in board.frontier] == ["kd / bottleneck", "kd / none"]
    [no_floor] = build_boards(records, floor=0.0)
    assert no_floor.floor.threshold is None and ranked(no_floor)[0] == ("kd / dp-sgd", 1, True)


def test_the_floor_falls_back_to_sft_and_is_absent_without_a_baseline() -> None:
    students = [make_record("kd", "dp-sgd", auc=0.5, rouge=1.0), make_record("kd", "none", auc=0.7, rouge=18.0)]
    [with_sft] = build_boards([make_record("sft", "none", rouge=20.0), *students])
    assert with_sft.floor.threshold == pytest.approx(10.0)
    assert ranked(with_sft)[-1] == ("kd / dp-sgd", 2, False)
    [alone] = build_boards(students)
    assert alone.floor.threshold is None and all(e.usable for e in alone.entries)


def test_the_same_seed_in_two_runs_is_one_replicate() -> None:
    # The second run reused the first's cached student: identical numbers. Counting (run, seed) gives 2 replicates.
    first = make_record("kd", "none", run_id="run-A", provenance={"model_key": "k0"})
    again = {**first, "run_id": "run-B", "git_commit": "other", "provenance": {"model_key": "k0", "packages": {}}}
    [shared] = check_replicates([first, again])
    assert (shared.seed, shared.runs) == (0, ("run-A", "run-B"))
    [cell] = group_cells(merge_records([first, again]).records)
    assert cell.replicates == [0]
    assert cell.strongest.auc.n == 1 and cell.utility.n == 1
    assert cell.strongest.auc.ci == pytest.approx((0.55, 0.65))  # the one seed's own CI, not a narrowed one


@pytest.mark.parametrize(
    ("change", "field"),
    [({"auc": 0.7}, "auc"), ({"provenance": {"model_key": "other"}}, "trained student")],
)
def test_conflicting_records_for_one_seed_name_both_runs(change: dict[str, Any], field: str) -> None:
    first = make_record("kd", "none", run_id="run-A", provenance={"model_key": "k0"})
    other = {**first, "run_id": "run-B", **change}
    with pytest.raises(ReplicateConflictError) as caught:
        check_replicates([first, other])
    message = str(caught.value)
    assert "'run-A'" in message and "'run-B'" in message and "seed 0" in message and field in message


def test_other_attacks_of_a_shared_seed_join_the_replicate() -> None:
    # Run B scored the cached student with one more attack: still seed 0, one replicate with both attacks.
    a = make_record("kd", "none", attack="loss", run_id="run-A")
    b = [{**a, "run_id": "run-B"}, make_record("kd", "none", attack="zlib", auc=0.7, run_id="run-B")]
    assert len(check_replicates([a, *b])) == 1
    [cell] = group_cells([a, *b])
    assert cell.replicates == [0] and {x.attack for x in cell.attacks} == {"loss", "zlib"}


# ------------------------------------------------------------------------- seeds and TPR (issue 19, items 4-5)


def test_three_seeds_get_a_t_interval_combined_with_the_sampling_ci() -> None:
    # AUCs 0.6, 0.7, 0.8, each with a ±0.05 bootstrap CI. s = 0.1, t(0.975, 2) = 4.302652729749464 (tables).
    records = [make_record(auc=auc, seed=seed, run_id=f"r{seed}") for seed, auc in enumerate((0.6, 0.7, 0.8))]
    [cell] = group_cells(records)
    half = ((4.302652729749464 * 0.1 / 3**0.5) ** 2 + 0.05**2) ** 0.5
    assert cell.strongest.auc.ci == pytest.approx((0.7 - half, 0.7 + half))
    assert cell.strongest.auc.spread == pytest.approx((0.6, 0.8))
    # The old rule (mean of the seeds' bounds) would give [0.65, 0.75]: blind to seed-to-seed variance.
    # ROUGE-L 20 each with ±1: no seed variance, so the interval is the sampling half-width alone.
    assert cell.utility.ci == pytest.approx((19.0, 21.0))


def test_rank_by_tpr_uses_the_strongest_attack_by_tpr() -> None:
    # Same utility. By AUC, b (0.60) beats a (0.70); by TPR@1%FPR a (0.01) beats b (0.30, from mink).
    records = [
        make_record("a", "none", attack="loss", auc=0.70, tpr_at_1pct_fpr=0.01),
        make_record("a", "none", attack="mink", auc=0.65, tpr_at_1pct_fpr=0.005),
        make_record("b", "none", attack="loss", auc=0.60, tpr_at_1pct_fpr=0.05),
        make_record("b", "none", attack="mink", auc=0.55, tpr_at_1pct_fpr=0.30),
    ]
    [board] = build_boards(records)
    assert [(n, r) for n, r, _ in ranked(board, "auc")] == [("b / none", 1), ("a / none", 2)]
    assert [(n, r) for n, r, _ in ranked(board, "tpr")] == [("a / none", 1), ("b / none", 2)]
    by_tpr = {e.cell.key.name: e for e in board.rankings["tpr"]}
    assert by_tpr["b / none"].attack.attack == "mink" and by_tpr["b / none"].risk == pytest.approx(0.30)
    assert by_tpr["a / none"].attack.attack == "loss"
    assert build_boards(records, metric="tpr")[0].entries[0].cell.key.name == "a / none"


def test_seed_intervals_need_every_seeds_ci_and_two_seeds_get_the_envelope() -> None:
    assert seed_interval([0.6, 0.7, 0.8], [(0.55, 0.65), None, (0.75, 0.85)]) is None  # sampling noise unknown
    assert seed_interval([0.6, 0.7], [(0.5, 0.7), (0.65, 0.72)]) == (0.5, 0.72)
    assert seed_interval([0.98] * 3, [(0.9, 1.0)] * 3) == pytest.approx((0.93, 1.0))  # clamped to [0, 1]
    [cell] = group_cells([make_record(seed=s, run_id=f"r{s}", tpr_at_1pct_fpr=0.1 * s) for s in range(3)])
    assert cell.strongest.tpr.ci is None and cell.strongest.tpr.spread == pytest.approx((0.0, 0.2))
