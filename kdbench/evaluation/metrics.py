"""Membership, memorization and utility metrics (METHODS.md §4, §5, §8).

Membership scores are oriented so that higher means "more likely a member", and the AUC is reported as is:
public [Z] code reports max(AUC, 1 − AUC), which turns an attack that is wrong in a consistent direction into
apparent leakage, so nothing here ever flips it. A threshold always means "predict member when score >= it".

Everything is exact and rank based (no interpolation of the ROC), so low-FPR numbers can be trusted down to
the resolution the non-member count allows, 1 / n_nonmembers, which is reported beside them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from rouge_score import rouge_scorer

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
TokenIds = Sequence[int] | npt.NDArray[np.integer[Any]]  # one unpadded token-id sequence

# Bootstrap resamples are drawn in chunks so memory stays bounded (about this many integers per chunk) for
# large evaluation sets, while the chunk sizes, hence the random stream, depend only on the inputs' sizes.
_CHUNK_ELEMENTS = 2_000_000


@dataclass(frozen=True)
class MembershipMetrics:
    """Everything reported for one attack against one target model."""

    auc: float
    auc_ci: tuple[float, float]
    tpr_at_01pct_fpr: float  # FPR 0.1%
    tpr_at_1pct_fpr: float
    tpr_at_5pct_fpr: float
    fpr_resolution: float  # 1 / n_nonmembers: the smallest FPR step that can be resolved
    balanced_accuracy: float  # at the threshold maximising it
    threshold: float  # that threshold (predict member when score >= threshold)
    roc: dict[str, list[float]]  # {"fpr": [...], "tpr": [...]}
    n_members: int
    n_nonmembers: int
    # [C]'s member-specific view, at its threshold (balanced accuracy maximised with each predicted class ≥ 20%):
    # the fraction of members flagged, and the fraction of flagged samples that are members (None: no such threshold)
    member_tpr: float | None = None
    member_precision: float | None = None


# validation ------------------------------------------------------------------------------------------


def _as_scores(values: npt.ArrayLike, side: str) -> FloatArray:
    """A 1-D, non-empty, finite float array, or a ValueError saying which side is wrong and how."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{side} scores must be a 1-D array, got shape {array.shape}.")
    if array.size == 0:
        raise ValueError(f"No {side} scores were given (0 samples); membership metrics need at least one.")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        shown = ", ".join(str(i) for i in bad[:5]) + (", ..." if bad.size > 5 else "")
        raise ValueError(
            f"{bad.size} of {array.size} {side} scores are not finite (NaN or inf), at indices {shown}. "
            "Fix the attack's scoring (e.g. an empty response or a log of zero) before computing metrics."
        )
    return array


def _pair(member_scores: npt.ArrayLike, nonmember_scores: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    return _as_scores(member_scores, "member"), _as_scores(nonmember_scores, "non-member")


def _check_bootstrap(n_resamples: int, confidence: float) -> None:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}.")


def _chunks(n_resamples: int, samples_per_resample: int) -> Iterator[int]:
    """Sizes of successive resample batches, each holding about _CHUNK_ELEMENTS drawn indices."""
    size = max(1, _CHUNK_ELEMENTS // max(1, samples_per_resample))
    for start in range(0, n_resamples, size):
        yield min(size, n_resamples - start)


def _percentile_interval(statistics: FloatArray, confidence: float) -> tuple[float, float]:
    low, high = np.quantile(statistics, [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
    return float(low), float(high)


# ROC / AUC -------------------------------------------------------------------------------------------


def _tie_positions(members: FloatArray, sorted_nonmembers: FloatArray) -> tuple[IntArray, IntArray]:
    """Per member: how many non-members score strictly below it, and how many score at or below it."""
    below = np.searchsorted(sorted_nonmembers, members, side="left").astype(np.int64)
    at_or_below = np.searchsorted(sorted_nonmembers, members, side="right").astype(np.int64)
    return below, at_or_below


def roc_auc(member_scores: npt.ArrayLike, nonmember_scores: npt.ArrayLike) -> float:
    """P(member > non-member) + 0.5·P(tie), never flipped: below 0.5 means the attack is inverted."""
    members, nonmembers = _pair(member_scores, nonmember_scores)
    below, at_or_below = _tie_positions(members, np.sort(nonmembers))
    # Twice the Mann-Whitney U in exact integers: each tie contributes one half.
    twice_u = int(below.sum()) + int(at_or_below.sum())
    return twice_u / (2.0 * members.size * nonmembers.size)


def bootstrap_auc_ci(
    member_scores: npt.ArrayLike,
    nonmember_scores: npt.ArrayLike,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile CI of the AUC from a stratified bootstrap (members and non-members resampled separately).

    Stratifying keeps both class sizes fixed, as they are by design of the split. Each resample is evaluated
    without re-sorting: non-member resample counts are accumulated along the original sort order, so a
    member's "below" and "at or below" counts are two lookups into that cumulative sum.
    """
    members, nonmembers = _pair(member_scores, nonmember_scores)
    _check_bootstrap(n_resamples, confidence)
    m, n = members.size, nonmembers.size
    below, at_or_below = _tie_positions(members, np.sort(nonmembers))
    rng = np.random.default_rng(seed)
    aucs: list[FloatArray] = []
    for batch in _chunks(n_resamples, m + n):
        # Resampling positions in the sorted order is the same as resampling the non-members themselves.
        picks = rng.integers(0, n, size=(batch, n)) + (np.arange(batch)[:, None] * n)
        counts = np.bincount(picks.ravel(), minlength=batch * n).reshape(batch, n)
        cumulative = np.zeros((batch, n + 1), dtype=np.int64)
        np.cumsum(counts, axis=1, out=cumulative[:, 1:])
        chosen = rng.integers(0, m, size=(batch, m))
        twice_u = np.take_along_axis(cumulative, below[chosen], axis=1).sum(axis=1) + np.take_along_axis(
            cumulative, at_or_below[chosen], axis=1
        ).sum(axis=1)
        aucs.append(twice_u / (2.0 * m * n))
    return _percentile_interval(np.concatenate(aucs), confidence)


def _roc_counts(members: FloatArray, nonmembers: FloatArray) -> tuple[FloatArray, IntArray, IntArray]:
    """Every distinct threshold (descending) with its true- and false-positive counts at score >= it."""
    thresholds = np.unique(np.concatenate([members, nonmembers]))[::-1]

    def at_or_above(scores: FloatArray) -> IntArray:
        return scores.size - np.searchsorted(np.sort(scores), thresholds, side="left").astype(np.int64)

    return thresholds, at_or_above(members), at_or_above(nonmembers)


def tpr_at_fpr(member_scores: npt.ArrayLike, nonmember_scores: npt.ArrayLike, fpr: float) -> float:
    """The highest TPR over thresholds whose empirical FPR is at most ``fpr``.

    No interpolation: with n non-members only multiples of 1/n are attainable, so a target below 1/n allows
    zero false positives, and the answer is the fraction of members scoring above every non-member.
    """
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must lie in [0, 1], got {fpr}.")
    members, nonmembers = _pair(member_scores, nonmember_scores)
    _, true_pos, false_pos = _roc_counts(members, nonmembers)
    # Dividing exact counts keeps e.g. 1/1000 <= 0.001 true; multiplying fpr by n may round past it.
    allowed = false_pos / nonmembers.size <= fpr
    # A threshold above every score (no positives at all) always qualifies, hence the 0 fallback.
    return float(true_pos[allowed].max()) / members.size if allowed.any() else 0.0


def resolves(fpr: float, n_nonmembers: int) -> bool:
    """Whether ``n_nonmembers`` resolve ``fpr``: the smallest non-zero FPR step, 1/n, is at most it. If not, the TPR
    "at" that FPR is the TPR at zero false positives (0.1% needs 1,000 non-members, 1% needs 100)."""
    return 1.0 / n_nonmembers <= fpr


def resolution_note(n_nonmembers: int, more: str) -> str:
    """One line for a table: the FPR step the non-members allow, which reported low-FPR TPRs it does not resolve,
    and (``more``) how to get more non-members."""
    note = f"{n_nonmembers} non-members resolve FPR in steps of 1/{n_nonmembers} = {100 / n_nonmembers:.3g}%"
    unresolved = [label for fpr, label in ((0.001, "0.1%"), (0.01, "1%")) if not resolves(fpr, n_nonmembers)]
    if not unresolved:
        return note + "."
    return (f"{note}: TPR at {' and '.join(unresolved)} FPR is the TPR at zero false positives (marked *); "
            f"1,000 non-members resolve 0.1%, 100 resolve 1% ({more}).")


def roc_points(
    member_scores: npt.ArrayLike, nonmember_scores: npt.ArrayLike, max_points: int = 101
) -> dict[str, list[float]]:
    """The empirical ROC for plotting: monotone, from (0, 0) to (1, 1), at most ``max_points`` points.

    Collinear points are dropped first (the curve is unchanged). If it is still too long, it is sampled as a
    step function on an even FPR grid, each point being the best TPR attainable at that FPR or below, so the
    plot never shows a better attack than the data support.
    """
    if max_points < 3:
        raise ValueError(f"max_points must be at least 3 (start, one grid point, end), got {max_points}.")
    members, nonmembers = _pair(member_scores, nonmember_scores)
    _, true_pos, false_pos = _roc_counts(members, nonmembers)
    true_pos = np.concatenate([[0], true_pos])
    false_pos = np.concatenate([[0], false_pos])
    keep = np.flatnonzero(
        np.concatenate([[True], (np.diff(true_pos, 2) != 0) | (np.diff(false_pos, 2) != 0), [True]])
    )
    tpr = true_pos[keep] / members.size
    fpr = false_pos[keep] / nonmembers.size
    if tpr.size > max_points:
        grid = np.arange(max_points - 1) / (max_points - 2)
        last_within = np.searchsorted(fpr, grid, side="right") - 1
        fpr = np.concatenate([[0.0], grid])
        tpr = np.concatenate([[0.0], tpr[last_within]])
    return {"fpr": [float(x) for x in fpr], "tpr": [float(y) for y in tpr]}


def best_balanced_accuracy(
    member_scores: npt.ArrayLike, nonmember_scores: npt.ArrayLike, min_class_fraction: float = 0.0
) -> tuple[float, float]:
    """(balanced accuracy, threshold) maximised over thresholds.

    ``min_class_fraction`` > 0 is [C]'s guard against degenerate thresholds: both the predicted members and
    the predicted non-members must be at least that fraction of all samples ([C] uses 0.2). Among equally
    good thresholds the highest (the one flagging fewest samples) is returned. A threshold just above the top
    score stands for "flag nobody", so the result is always a finite number.
    """
    if not 0.0 <= min_class_fraction <= 0.5:
        raise ValueError(f"min_class_fraction must lie in [0, 0.5], got {min_class_fraction}.")
    members, nonmembers = _pair(member_scores, nonmember_scores)
    m, n = members.size, nonmembers.size
    thresholds, true_pos, false_pos = _roc_counts(members, nonmembers)
    above_all = np.nextafter(thresholds[0], np.inf)
    thresholds = np.concatenate([[above_all], thresholds])
    true_pos = np.concatenate([[0], true_pos])
    false_pos = np.concatenate([[0], false_pos])
    total = m + n
    flagged = true_pos + false_pos
    feasible = (flagged / total >= min_class_fraction) & ((total - flagged) / total >= min_class_fraction)
    if not feasible.any():
        raise ValueError(
            f"No threshold leaves at least {min_class_fraction:.0%} of the {total} samples in each predicted "
            "class (too many tied scores); lower min_class_fraction."
        )
    # 2·m·n·BA = tp·n + tn·m, in exact integers so that equal accuracies compare equal.
    numerator = np.where(feasible, true_pos * n + (n - false_pos) * m, -1)
    best = int(np.argmax(numerator))  # thresholds are descending: the first maximum is the highest threshold
    return float(numerator[best]) / (2.0 * m * n), float(thresholds[best])


def membership_metrics(
    member_scores: npt.ArrayLike, nonmember_scores: npt.ArrayLike, seed: int = 0, n_resamples: int = 1000
) -> MembershipMetrics:
    """All membership metrics of METHODS.md §4 for one attack's scores; balanced accuracy unconstrained."""
    members, nonmembers = _pair(member_scores, nonmember_scores)
    balanced_accuracy, threshold = best_balanced_accuracy(members, nonmembers)
    member_tpr, member_precision = member_specific(members, nonmembers)
    return MembershipMetrics(
        auc=roc_auc(members, nonmembers),
        auc_ci=bootstrap_auc_ci(members, nonmembers, n_resamples=n_resamples, seed=seed),
        tpr_at_01pct_fpr=tpr_at_fpr(members, nonmembers, 0.001),
        tpr_at_1pct_fpr=tpr_at_fpr(members, nonmembers, 0.01),
        tpr_at_5pct_fpr=tpr_at_fpr(members, nonmembers, 0.05),
        fpr_resolution=1.0 / nonmembers.size,
        balanced_accuracy=balanced_accuracy,
        threshold=threshold,
        roc=roc_points(members, nonmembers),
        n_members=int(members.size),
        n_nonmembers=int(nonmembers.size),
        member_tpr=member_tpr,
        member_precision=member_precision,
    )


C_MIN_CLASS_FRACTION = 0.2
"""[C]'s guard: each predicted class holds at least this fraction of the samples at its threshold."""


def member_specific(
    member_scores: npt.ArrayLike, nonmember_scores: npt.ArrayLike, min_class_fraction: float = C_MIN_CLASS_FRACTION
) -> tuple[float | None, float | None]:
    """[C]'s member-specific risk: (TPR on members, precision of the flagged samples) at the threshold maximising
    balanced accuracy with each predicted class ≥ ``min_class_fraction`` of the samples; (None, None) when
    ties leave no such threshold. Why beside the AUC: [C] reads a rise of these under distillation as members
    being more exposed even where the AUC does not move."""
    members, nonmembers = _pair(member_scores, nonmember_scores)
    try:
        _, threshold = best_balanced_accuracy(members, nonmembers, min_class_fraction)
    except ValueError:
        return None, None
    flagged_members = int((members >= threshold).sum())
    flagged = flagged_members + int((nonmembers >= threshold).sum())
    return flagged_members / members.size, (flagged_members / flagged if flagged else None)


# utility ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _rouge_l_scorer() -> Any:
    """Built once: constructing the stemming scorer is far slower than scoring one pair."""
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_per_sample(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> FloatArray:
    """Per-prediction ROUGE-L F1 ×100, the best over that prediction's references (kept for CIs)."""
    if isinstance(predictions, str) or isinstance(references, str):
        raise ValueError("predictions and references must be sequences of strings, not a single string.")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references; must pair up.")
    scorer = _rouge_l_scorer()
    values = np.empty(len(predictions), dtype=np.float64)
    for i, (prediction, refs) in enumerate(zip(predictions, references, strict=True)):
        options = [refs] if isinstance(refs, str) else list(refs)
        if not options:
            raise ValueError(f"Sample {i} has no reference text.")
        values[i] = 100.0 * max(scorer.score(ref, prediction)["rougeL"].fmeasure for ref in options)
    return values


def rouge_l(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Corpus ROUGE-L (METHODS.md §8): mean over samples of the per-sample value, on a 0–100 scale."""
    if len(predictions) == 0:
        raise ValueError("No predictions were given; ROUGE-L of an empty set is undefined.")
    return float(rouge_l_per_sample(predictions, references).mean())


def mean_ci(
    values: npt.ArrayLike, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of a mean (e.g. per-sample ROUGE-L or memorization rates)."""
    array = _as_scores(values, "value")
    _check_bootstrap(n_resamples, confidence)
    rng = np.random.default_rng(seed)
    means = [
        array[rng.integers(0, array.size, size=(batch, array.size))].mean(axis=1)
        for batch in _chunks(n_resamples, array.size)
    ]
    return _percentile_interval(np.concatenate(means), confidence)


# memorization ----------------------------------------------------------------------------------------


def _token_ids(tokens: npt.ArrayLike, what: str, index: int) -> IntArray:
    array = np.asarray(tokens, dtype=np.int64)
    if array.ndim != 1:
        raise ValueError(f"{what} sequence {index} must be a 1-D list of token ids, got shape {array.shape}.")
    return array


def memorization_rates(
    generated: Sequence[TokenIds], gold: Sequence[TokenIds], n_compare: int = 32
) -> FloatArray:
    """Per-sample token-wise exact-match rate of a greedy continuation against the gold response (§5).

    The first ``n_compare`` generated ids are compared position by position with the first ``n_compare`` gold
    ids; the denominator is the number of gold ids compared, so a short gold response is not diluted, and a
    generation that stops early loses the positions it did not produce. Callers pass unpadded sequences, so,
    unlike [Z]'s code, padding can never match padding.
    """
    if n_compare < 1:
        raise ValueError(f"n_compare must be at least 1, got {n_compare}.")
    if len(generated) != len(gold):
        raise ValueError(f"{len(generated)} generated sequences but {len(gold)} gold ones; must pair up.")
    rates = np.empty(len(gold), dtype=np.float64)
    for i, (produced, expected) in enumerate(zip(generated, gold, strict=True)):
        reference = _token_ids(expected, "gold", i)[:n_compare]
        if reference.size == 0:
            raise ValueError(f"Gold response {i} is empty; there is nothing to compare its generation with.")
        candidate = _token_ids(produced, "generated", i)[: reference.size]
        matches = int(np.count_nonzero(candidate == reference[: candidate.size]))
        rates[i] = matches / reference.size
    return rates
