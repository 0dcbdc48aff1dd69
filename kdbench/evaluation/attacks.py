"""Evaluate one target model: every attack (from shared, cached statistics), memorization and utility."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from kdbench.core.errors import KdbenchError, PluginError
from kdbench.core.registry import Resolved
from kdbench.core.types import TrainedModel
from kdbench.evaluation import metrics
from kdbench.evaluation.memorization import MemorizationReport
from kdbench.scoring.context import ScoringContext
from kdbench.scoring.inputs import AttackInputs
from kdbench.scoring.needs import Need


@dataclass
class TargetEvaluation:
    """Everything measured on one target model."""

    target: str
    trained: TrainedModel
    rouge_l: float
    rouge_l_ci: tuple[float, float]
    memorization: dict[str, float]
    attacks: dict[str, metrics.MembershipMetrics] = field(default_factory=dict)
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    sample_ids: list[str] = field(default_factory=list)
    n_members: int = 0
    distiller: Resolved | None = None
    defenses: list[Resolved] = field(default_factory=list)
    memorization_report: MemorizationReport | None = None
    rouge_l_samples: np.ndarray | None = None  # per eval sample, for paired CIs of defended − undefended
    attack_errors: dict[str, str] = field(default_factory=dict)  # label -> why that attack failed on this target
    # Reference baselines (``blind``): measured on the same samples, never counted as attacks (strongest, risk).
    references: dict[str, metrics.MembershipMetrics] = field(default_factory=dict)
    reference_scores: dict[str, np.ndarray] = field(default_factory=dict)
    teacher_rkl: dict[str, float] | None = None  # reverse KL to the teacher before/after training (run.divergence)
    pii_leakage: dict[str, float | int | None] | None = None  # secret PII values emitted (evaluation.pii)


def run_attacks(
    attacks: Sequence[Resolved], scoring: ScoringContext, n_members: int, *, seed: int, n_resamples: int,
    errors: dict[str, str] | None = None,
) -> tuple[dict[str, metrics.MembershipMetrics], dict[str, np.ndarray]]:
    """Every attack's per-sample scores and metrics (members are the first ``n_members`` samples); each need
    is computed once by ``scoring`` whichever attacks share it. Only reference baselines get the labels.

    With ``errors``, an attack that fails is left out of both results and its message stored there under its
    label, so one broken attack costs only its own numbers; without, its error is raised.
    """
    wants_stats = any(Need.TOKEN_STATS in a.instance.needs for a in attacks)
    inputs = AttackInputs(
        samples=scoring.samples, token_stats=scoring.token_stats() if wants_stats else None, scoring=scoring
    )
    labels = np.arange(len(scoring.samples)) < n_members
    results, all_scores = {}, {}
    for attack in attacks:
        given = replace(inputs, membership=labels) if Need.MEMBERSHIP_LABELS in attack.instance.needs else inputs
        try:
            scores = _checked_scores(attack, given, len(scoring.samples))
        except KdbenchError as exc:
            if errors is None:
                raise
            errors[attack.label] = str(exc)
            continue
        all_scores[attack.label] = scores
        results[attack.label] = metrics.membership_metrics(
            scores[:n_members], scores[n_members:], seed=seed, n_resamples=n_resamples
        )
    return results, all_scores


def _checked_scores(attack: Resolved, inputs: AttackInputs, n: int) -> np.ndarray:
    """An attack's scores, refusing wrong shapes and non-finite values instead of reporting a silent NaN."""
    try:
        scores = np.asarray(attack.instance.score(inputs), dtype=np.float64)
    except KdbenchError:
        raise  # already says what to do (a missing reference model, a corpus the host lacks, ...)
    except Exception as exc:
        raise PluginError(
            f"Attack {attack.label!r} (from {attack.info.distribution}) failed: {type(exc).__name__}: {exc}"
        ) from exc
    if scores.shape != (n,):
        raise PluginError(f"Attack {attack.label!r} returned {scores.shape} scores for {n} samples.")
    if not np.all(np.isfinite(scores)):
        bad = int((~np.isfinite(scores)).sum())
        raise PluginError(f"Attack {attack.label!r} returned {bad} non-finite scores (NaN or inf) of {n}.")
    return scores
