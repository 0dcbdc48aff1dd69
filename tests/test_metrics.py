"""kdbench.evaluation.metrics against brute-force definitions and hand-computed cases."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
from sklearn.metrics import roc_auc_score

from kdbench.evaluation.metrics import (
    MembershipMetrics,
    best_balanced_accuracy,
    bootstrap_auc_ci,
    mean_ci,
    member_specific,
    membership_metrics,
    memorization_rates,
    roc_auc,
    roc_points,
    rouge_l,
    rouge_l_per_sample,
    tpr_at_fpr,
)

Scores = npt.NDArray[np.float64]


def _tied_scores(seed: int, n_members: int, n_nonmembers: int) -> tuple[Scores, Scores]:
    """Integer-valued scores on a small range, so ties within and across classes are common."""
    rng = np.random.default_rng(seed)
    members = rng.integers(0, 12, n_members).astype(np.float64) + 1.0  # shifted: a real but imperfect signal
    nonmembers = rng.integers(0, 12, n_nonmembers).astype(np.float64)
    return members, nonmembers


def _thresholds(members: Scores, nonmembers: Scores) -> list[float]:
    """Every threshold that gives a distinct prediction, including one that flags nobody."""
    pooled = np.concatenate([members, nonmembers])
    return [*np.unique(pooled).tolist(), float(pooled.max()) + 1.0]


def _brute_tpr_at_fpr(members: Scores, nonmembers: Scores, fpr: float) -> float:
    best = 0.0
    for threshold in _thresholds(members, nonmembers):
        if np.mean(nonmembers >= threshold) <= fpr:
            best = max(best, float(np.mean(members >= threshold)))
    return best


def _balanced_accuracy(members: Scores, nonmembers: Scores, threshold: float) -> float:
    return 0.5 * (float(np.mean(members >= threshold)) + float(np.mean(nonmembers < threshold)))


def _brute_balanced_accuracy(members: Scores, nonmembers: Scores, min_class_fraction: float) -> float:
    pooled = np.concatenate([members, nonmembers])
    best = -1.0
    for threshold in _thresholds(members, nonmembers):
        flagged = float(np.mean(pooled >= threshold))
        if flagged >= min_class_fraction and 1.0 - flagged >= min_class_fraction:
            best = max(best, _balanced_accuracy(members, nonmembers, threshold))
    return best


# AUC --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_sklearn_with_ties(seed: int) -> None:
    members, nonmembers = _tied_scores(seed, 40 + 7 * seed, 55)
    labels = np.r_[np.ones(members.size), np.zeros(nonmembers.size)]
    expected = roc_auc_score(labels, np.r_[members, nonmembers])
    assert roc_auc(members, nonmembers) == pytest.approx(expected, abs=1e-12)


def test_roc_auc_is_never_flipped() -> None:
    low, high = np.arange(10.0), np.arange(10.0) + 100.0
    assert roc_auc(high, low) == 1.0
    assert roc_auc(low, high) == 0.0  # a max(auc, 1 - auc) implementation would say 1.0
    assert roc_auc(np.full(5, 3.0), np.full(7, 3.0)) == 0.5  # all ties count one half


def test_bootstrap_ci_contains_estimate_and_narrows_with_n() -> None:
    rng = np.random.default_rng(1)
    widths = []
    for n in (50, 200, 800):
        members, nonmembers = rng.normal(0.5, 1.0, n), rng.normal(0.0, 1.0, n)
        low, high = bootstrap_auc_ci(members, nonmembers, n_resamples=500, seed=0)
        assert low < roc_auc(members, nonmembers) < high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < 0.1


def test_bootstrap_ci_is_seeded_and_matches_a_naive_bootstrap() -> None:
    members, nonmembers = _tied_scores(2, 60, 80)
    first = bootstrap_auc_ci(members, nonmembers, n_resamples=2000, seed=3)
    assert first == bootstrap_auc_ci(members, nonmembers, n_resamples=2000, seed=3)
    # The vectorised estimator must agree, up to Monte Carlo noise, with the obvious loop.
    rng = np.random.default_rng(99)
    naive = [
        roc_auc(rng.choice(members, members.size), rng.choice(nonmembers, nonmembers.size))
        for _ in range(2000)
    ]
    expected = np.quantile(naive, [0.025, 0.975])
    assert first == pytest.approx(tuple(expected), abs=0.02)


def test_bootstrap_ci_is_fast() -> None:
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(0.3, 1.0, 500), rng.normal(0.0, 1.0, 500)
    bootstrap_auc_ci(members, nonmembers)  # warm-up
    start = time.perf_counter()
    bootstrap_auc_ci(members, nonmembers, n_resamples=1000)
    assert time.perf_counter() - start < 0.3


# TPR at low FPR ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("fpr", [0.0, 0.001, 0.01, 0.05, 0.1, 0.5, 1.0])
def test_tpr_at_fpr_matches_brute_force(seed: int, fpr: float) -> None:
    members, nonmembers = _tied_scores(seed, 80, 100)
    assert tpr_at_fpr(members, nonmembers, fpr) == pytest.approx(_brute_tpr_at_fpr(members, nonmembers, fpr))


def test_fpr_below_resolution_means_zero_false_positives() -> None:
    nonmembers = np.arange(100.0)  # resolution 1/100
    members = np.array([50.0, 99.0, 99.5, 100.0, 120.0])
    zero_fp = float(np.mean(members > nonmembers.max()))
    assert zero_fp == 0.6
    assert tpr_at_fpr(members, nonmembers, 0.001) == zero_fp
    assert tpr_at_fpr(members, nonmembers, 0.0) == zero_fp
    assert tpr_at_fpr(members, nonmembers, 0.01) == 0.8  # exactly one false positive now allowed
    assert tpr_at_fpr(np.array([-1.0]), nonmembers, 0.001) == 0.0


# ROC points -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_members", "n_nonmembers"), [(3, 4), (30, 40), (700, 900)])
def test_roc_points_are_monotone_with_endpoints(n_members: int, n_nonmembers: int) -> None:
    rng = np.random.default_rng(n_members)
    roc = roc_points(rng.normal(0.5, 1, n_members), rng.normal(0, 1, n_nonmembers))
    fpr, tpr = np.array(roc["fpr"]), np.array(roc["tpr"])
    assert fpr.size == tpr.size <= 101
    assert (fpr[0], tpr[0]) == (0.0, 0.0)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def test_roc_points_exact_when_short() -> None:
    roc = roc_points(np.array([3.0, 2.0]), np.array([2.0, 1.0]))
    # threshold 3: (0, .5); threshold 2: a tie moves both, (.5, 1); threshold 1: (1, 1)
    assert roc == {"fpr": [0.0, 0.0, 0.5, 1.0], "tpr": [0.0, 0.5, 1.0, 1.0]}


def test_roc_points_never_overstate_the_attack_when_sampled() -> None:
    members, nonmembers = _tied_scores(7, 600, 800)
    members = members + np.random.default_rng(0).normal(0, 0.01, members.size)  # many distinct thresholds
    roc = roc_points(members, nonmembers, max_points=21)
    assert len(roc["fpr"]) == 21
    for fpr, tpr in zip(roc["fpr"][1:], roc["tpr"][1:], strict=True):
        assert tpr == pytest.approx(_brute_tpr_at_fpr(members, nonmembers, fpr))


# balanced accuracy ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("min_class_fraction", [0.0, 0.2, 0.4])
def test_best_balanced_accuracy_matches_brute_force(seed: int, min_class_fraction: float) -> None:
    members, nonmembers = _tied_scores(seed, 50, 70)
    members = members + np.random.default_rng(seed).normal(
        0, 0.1, members.size
    )  # fewer ties: always feasible
    accuracy, threshold = best_balanced_accuracy(members, nonmembers, min_class_fraction)
    assert accuracy == pytest.approx(_brute_balanced_accuracy(members, nonmembers, min_class_fraction))
    # The returned threshold really achieves it and respects the class-size constraint.
    assert _balanced_accuracy(members, nonmembers, threshold) == pytest.approx(accuracy)
    flagged = float(np.mean(np.concatenate([members, nonmembers]) >= threshold))
    assert min_class_fraction <= flagged <= 1.0 - min_class_fraction


def test_min_class_fraction_binds() -> None:
    # Flagging the two top members alone is best (0.6) but flags 2 of 20 samples, under [C]'s 20%.
    members = np.array([10.0, 9.0, *[0.0] * 8])
    nonmembers = np.array([*[5.0] * 5, *[1.0] * 5])
    assert best_balanced_accuracy(members, nonmembers) == (0.6, 9.0)
    assert best_balanced_accuracy(members, nonmembers, min_class_fraction=0.2) == (0.35, 5.0)
    with pytest.raises(ValueError, match="min_class_fraction"):
        best_balanced_accuracy(np.ones(3), np.ones(3), min_class_fraction=0.2)  # all tied: no valid split


def test_membership_metrics_bundle() -> None:
    members, nonmembers = _tied_scores(4, 120, 250)
    result = membership_metrics(members, nonmembers, seed=1, n_resamples=200)
    assert isinstance(result, MembershipMetrics)
    assert result.auc == roc_auc(members, nonmembers)
    assert result.auc_ci == bootstrap_auc_ci(members, nonmembers, n_resamples=200, seed=1)
    assert result.tpr_at_01pct_fpr == tpr_at_fpr(members, nonmembers, 0.001)
    assert result.tpr_at_1pct_fpr == tpr_at_fpr(members, nonmembers, 0.01)
    assert result.tpr_at_5pct_fpr == tpr_at_fpr(members, nonmembers, 0.05)
    assert result.fpr_resolution == 1 / 250
    assert (result.balanced_accuracy, result.threshold) == best_balanced_accuracy(members, nonmembers)
    assert (result.n_members, result.n_nonmembers) == (120, 250)
    assert all(isinstance(v, float) for v in (result.auc, *result.auc_ci, result.threshold))


# validation -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "function",
    [roc_auc, bootstrap_auc_ci, best_balanced_accuracy, membership_metrics, roc_points],
)
def test_bad_scores_raise(function: Callable[..., object]) -> None:
    good = np.array([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"2 of 3 non-member scores are not finite.*indices 0, 2"):
        function(good, np.array([np.nan, 0.5, np.inf]))
    with pytest.raises(ValueError, match="1 of 3 member scores"):
        function(np.array([0.1, np.nan, 0.3]), good)
    with pytest.raises(ValueError, match="No member scores"):
        function(np.array([]), good)
    with pytest.raises(ValueError, match="No non-member scores"):
        function(good, [])
    with pytest.raises(ValueError, match="1-D"):
        function(good.reshape(3, 1), good)


def test_tpr_at_fpr_validates() -> None:
    with pytest.raises(ValueError, match="1 of 1 non-member scores"):
        tpr_at_fpr([0.1], [np.nan], 0.01)
    with pytest.raises(ValueError, match="fpr must lie"):
        tpr_at_fpr([0.1], [0.2], 1.5)


# utility ----------------------------------------------------------------------------------------------------


def test_rouge_l_extremes() -> None:
    assert rouge_l(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert rouge_l(["alpha beta"], ["gamma delta"]) == 0.0


def test_rouge_l_hand_computed_lcs() -> None:
    # tokens: red green blue yellow | red blue purple; LCS = (red, blue) = 2, P = 2/4, R = 2/3, F = 4/7.
    assert rouge_l(["red green blue yellow"], ["red blue purple"]) == pytest.approx(400 / 7)
    # stemming: "cats"/"cat" and "running"/"run" count as matches.
    assert rouge_l(["cats running"], ["cat run"]) == pytest.approx(100.0)


def test_rouge_l_takes_best_reference_and_averages_samples() -> None:
    predictions = ["red green blue yellow", "alpha beta"]
    references = [["gamma", "red blue purple", "red"], "alpha beta"]
    per_sample = rouge_l_per_sample(predictions, references)
    assert per_sample == pytest.approx([400 / 7, 100.0])
    assert rouge_l(predictions, references) == pytest.approx((400 / 7 + 100) / 2)
    with pytest.raises(ValueError, match="pair up"):
        rouge_l(predictions, references[:1])
    with pytest.raises(ValueError, match="Sample 0 has no reference"):
        rouge_l(["x"], [[]])


def test_mean_ci() -> None:
    rng = np.random.default_rng(5)
    small, large = rng.normal(10, 2, 30), rng.normal(10, 2, 3000)
    low, high = mean_ci(small, seed=0)
    assert low < small.mean() < high
    assert mean_ci(small, seed=0) == (low, high)
    large_low, large_high = mean_ci(large, seed=0)
    assert large_high - large_low < (high - low) / 5
    # about the normal-theory interval: 2 * 1.96 * sd / sqrt(n)
    assert large_high - large_low == pytest.approx(2 * 1.96 * large.std() / np.sqrt(large.size), rel=0.15)
    with pytest.raises(ValueError, match="not finite"):
        mean_ci([1.0, np.nan])


# memorization -----------------------------------------------------------------------------------------------


def test_memorization_rates_hand_made() -> None:
    gold_long = list(range(100, 140))  # 40 tokens: only the first 32 count
    generated = [
        list(range(100, 164)),  # exact on the first 32 (and beyond)
        [*range(100, 116), *([0] * 48)],  # first 16 right
        list(range(100, 108)),  # stopped after 8 correct tokens: the other 24 count as misses
        [7, 8, 9, 1, 1],  # gold of 3 tokens: denominator 3, extra generated tokens ignored
        [5, 6],  # gold 5, 6, 7: the missing third position is a miss
        [1, 0, 0, 0],  # gold ends in what looks like padding, but only real gold tokens are compared
    ]
    gold = [gold_long, gold_long, gold_long, [7, 8, 1], [5, 6, 7], [1]]
    rates = memorization_rates(generated, gold)
    assert rates == pytest.approx([1.0, 0.5, 0.25, 2 / 3, 2 / 3, 1.0])
    assert memorization_rates([[1, 2, 3, 4]], [[1, 2, 0, 4]], n_compare=2) == pytest.approx([1.0])
    assert memorization_rates([np.array([3, 3])], [np.array([3, 4])]) == pytest.approx([0.5])


def test_memorization_rates_never_match_padding() -> None:
    # [Z]'s quirk: padded generation vs padded gold counts pad==pad as a match. Here a short gold response
    # only contributes its real tokens, and an empty generation scores zero.
    assert memorization_rates([[]], [[4, 5]]) == pytest.approx([0.0])
    assert memorization_rates([[0] * 32], [[9, 9]]) == pytest.approx([0.0])
    # An early stop is not padded: id 0 (often the pad id) in the gold is not matched for free.
    assert memorization_rates([[5]], [[5, 0]]) == pytest.approx([0.5])


def test_memorization_rates_errors() -> None:
    with pytest.raises(ValueError, match="Gold response 1 is empty"):
        memorization_rates([[1], [2]], [[1], []])
    with pytest.raises(ValueError, match="pair up"):
        memorization_rates([[1]], [[1], [2]])


def test_member_specific_risk_uses_cs_constrained_threshold() -> None:
    """By hand: members 10, .3, .2, .1, 0; non-members .35, .25, .15, .05, -1. Balanced accuracy peaks at 0.6 at
    thresholds 10 (1 flagged: 10% < [C]'s 20% per predicted class, so not allowed), .3 (3 flagged) and .2 (5
    flagged); the highest allowed is .3: members flagged 2/5, and 2 of the 3 flagged are members. Ignoring the
    20% guard gives (0.2, 1.0), taking the lowest tied threshold (0.6, 0.6)."""
    members, nonmembers = [10.0, 0.3, 0.2, 0.1, 0.0], [0.35, 0.25, 0.15, 0.05, -1.0]
    assert member_specific(members, nonmembers) == pytest.approx((0.4, 2 / 3))
    m = membership_metrics(members, nonmembers, n_resamples=50)
    assert (m.member_tpr, m.member_precision) == pytest.approx((0.4, 2 / 3))
    assert m.balanced_accuracy == pytest.approx(0.6)
    assert member_specific([1.0] * 5, [1.0] * 5) == (None, None)  # all tied: no threshold leaves 20% each side
