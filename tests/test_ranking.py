"""The leaderboard's ranking rule (kdbench.leaderboard.ranking): Pareto layers, tie-break, aggregation, merging."""

from __future__ import annotations

import random
from typing import Any

import pytest

from kdbench.leaderboard.ranking import build_boards, dominates, group_cells, merge_records, pareto_layers, rank_cells
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
    assert cell.risk == pytest.approx(0.65)
    assert cell.strongest.auc.spread == (0.60, 0.70)
    assert cell.strongest.auc.ci == pytest.approx((0.60, 0.70))  # mean of [0.55, 0.65] and [0.65, 0.75]
    assert cell.utility.value == pytest.approx(21.0)
    assert cell.utility.ci is None  # no record carried rouge_l_ci
    assert cell.replicates == [("r0", 0), ("r1", 1)]


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
