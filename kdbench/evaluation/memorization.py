"""Memorization beyond the member/non-member rates of METHODS.md §5: the teacher-conditioned rate and the
agreement between memorization and membership inference.

- Teacher-conditioned: among the members the **teacher** memorizes (per-sample match rate > t, default 0.5),
  the target's mean match rate ([Z]'s statistic, METHODS.md §5) and the fraction the target memorizes too
  (its own rate > t).
- Agreement: the members flagged by memorization (rate > t) against the members flagged by the strongest
  attack (highest AUC) at a fixed FPR (default 5%, the threshold allowing the most members at that FPR):
  Jaccard index and Cohen's κ over the members. [Z] reports these two views flag different samples.

Undefined values (no member memorized by the teacher; two empty sets; κ with no variation) are ``None`` in
memorization.json and left out of the records' ``memorization`` dict, never NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

DEFAULT_THRESHOLD = 0.5
DEFAULT_AGREEMENT_FPR = 0.05

BoolArray = npt.NDArray[np.bool_]


def flagged_at_fpr(member_scores: npt.ArrayLike, nonmember_scores: npt.ArrayLike, fpr: float) -> BoolArray:
    """Members an attack flags at the lowest threshold whose FPR is at most ``fpr`` (the TPR-maximising one,
    as :func:`kdbench.evaluation.metrics.tpr_at_fpr`): a member is flagged when it scores above the (k+1)-th highest
    non-member, k = floor(fpr · n_nonmembers)."""
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must lie in [0, 1], got {fpr}.")
    members = np.asarray(member_scores, dtype=np.float64)
    nonmembers = np.sort(np.asarray(nonmember_scores, dtype=np.float64))[::-1]
    allowed = int(np.floor(fpr * nonmembers.size + 1e-9))
    if allowed >= nonmembers.size:
        return np.ones(members.size, dtype=bool)
    return members > nonmembers[allowed]


def jaccard(a: BoolArray, b: BoolArray) -> float | None:
    union = int(np.count_nonzero(a | b))
    return int(np.count_nonzero(a & b)) / union if union else None


def cohen_kappa(a: BoolArray, b: BoolArray) -> float | None:
    """κ = (p_o − p_e) / (1 − p_e); None when chance agreement is total (both constant and equal)."""
    if a.size == 0:
        return None
    observed = float(np.mean(a == b))
    pa, pb = float(np.mean(a)), float(np.mean(b))
    expected = pa * pb + (1.0 - pa) * (1.0 - pb)
    return (observed - expected) / (1.0 - expected) if expected < 1.0 else None


@dataclass(frozen=True)
class Agreement:
    attack: str
    fpr: float
    n_memorized: int
    n_flagged: int
    n_both: int
    jaccard: float | None
    kappa: float | None


def agreement(memorized: BoolArray, attack: str, member_scores: np.ndarray, nonmember_scores: np.ndarray,
              fpr: float) -> Agreement:
    flagged = flagged_at_fpr(member_scores, nonmember_scores, fpr)
    return Agreement(attack, fpr, int(memorized.sum()), int(flagged.sum()), int((memorized & flagged).sum()),
                     jaccard(memorized, flagged), cohen_kappa(memorized, flagged))


@dataclass(frozen=True)
class MemorizationReport:
    """One target's memorization: the §5 rates, the teacher-conditioned rate and the agreement."""

    ids: Sequence[str]
    rates: np.ndarray  # per sample, members first
    n_members: int
    threshold: float
    teacher_member_rates: np.ndarray | None = None  # None for the teacher itself
    agreement: Agreement | None = None

    @property
    def memorized(self) -> BoolArray:
        return self.rates[: self.n_members] > self.threshold

    def teacher_conditioned(self) -> tuple[int, float | None, float | None]:
        """(members the teacher memorizes, the target's mean rate on them, the fraction it memorizes too)."""
        if self.teacher_member_rates is None:
            return 0, None, None
        chosen = self.teacher_member_rates > self.threshold
        if not chosen.any():
            return 0, None, None
        mine = self.rates[: self.n_members][chosen]
        return int(chosen.sum()), float(mine.mean()), float(np.mean(mine > self.threshold))

    def summary(self) -> dict[str, float]:
        """The records' ``memorization`` dict: defined numbers only."""
        members, nonmembers = float(self.rates[: self.n_members].mean()), float(self.rates[self.n_members :].mean())
        values: dict[str, float | None] = {
            "members": members, "nonmembers": nonmembers, "gap": members - nonmembers,
            "memorized_fraction": float(self.memorized.mean()),
        }
        if self.teacher_member_rates is not None:
            _, rate, fraction = self.teacher_conditioned()
            values |= {"teacher_conditioned_rate": rate, "teacher_conditioned_fraction": fraction}
        if self.agreement is not None:
            values |= {"agreement_jaccard": self.agreement.jaccard, "agreement_kappa": self.agreement.kappa}
        return {k: v for k, v in values.items() if v is not None}

    def to_json(self) -> dict[str, Any]:
        """This target's entry in memorization.json (documented in docs/results.md)."""
        n_teacher, rate, fraction = self.teacher_conditioned()
        summary = self.summary()
        return {
            "members": summary["members"],
            "nonmembers": summary["nonmembers"],
            "gap": summary["gap"],
            "threshold": self.threshold,
            "memorized": {"n": int(self.memorized.sum()), "fraction": summary["memorized_fraction"]},
            "teacher_conditioned": None if self.teacher_member_rates is None else {
                "n_teacher_memorized": n_teacher, "rate": rate, "fraction": fraction,
            },
            "agreement": None if self.agreement is None else asdict(self.agreement),
            "per_sample": [
                {"id": sample_id, "member": i < self.n_members, "rate": float(self.rates[i])}
                for i, sample_id in enumerate(self.ids)
            ],
        }
