"""What each defense buys and costs: Δrisk and Δutility of every defended student against the undefended
(``none``) student of the same task, seed, teacher, student base and distiller (parameters included).

Both deltas are defended − undefended: Δrisk < 0 is privacy bought, ΔROUGE-L < 0 is utility lost.

- Risk is the strongest attack's AUC, the maximum over the run's attacks taken for each student separately.
  Its CI is a paired, stratified bootstrap over the attack samples: both students are scored on the same
  members and non-members, so every resample draws the same members and the same non-members for both,
  recomputes every attack's AUC on each, and takes the difference of the two maxima.
- Utility is ROUGE-L on the eval split. Its CI is a paired bootstrap over the eval samples when the
  evaluations carry per-sample values (a ``rouge_l_samples`` array); otherwise the documented approximation
  Δ ± sqrt(h_d² + h_u²), h = the half-width of each student's own 95% bootstrap CI, which treats the two as
  independent and so is wider than the paired interval (both answer the same prompts).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdbench.core.cache import atomic_write_text
from kdbench.defense.stack import is_undefended
from kdbench.evaluation import metrics

REFERENCE = "undefended"
"""What every defended student is compared with: the same cell under a stack that acts at no stage (``none``)."""


@dataclass(frozen=True)
class DefenseDelta:
    """One defended cell against its undefended reference."""

    task: str
    seed: int
    teacher: str
    student: str
    distiller: str
    defense: str
    defense_params: dict[str, Any]
    rouge_l: float
    reference_rouge_l: float
    delta_rouge_l: float
    delta_rouge_l_ci: tuple[float, float]
    utility_ci: str  # "paired bootstrap" or "independent approximation"
    attack: str  # the defended student's strongest attack
    auc: float
    reference_attack: str
    reference_auc: float
    delta_auc: float
    delta_auc_ci: tuple[float, float]
    defense_report: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["delta_rouge_l_ci"], data["delta_auc_ci"] = list(self.delta_rouge_l_ci), list(self.delta_auc_ci)
        return data


def _strongest(scores: dict[str, np.ndarray], members: np.ndarray, nonmembers: np.ndarray) -> float:
    return max(metrics.roc_auc(s[members], s[nonmembers]) for s in scores.values())


def paired_risk_delta(
    defended: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    n_members: int,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, tuple[float, float]]:
    """Δ of the strongest-attack AUC (defended − reference) and its paired stratified bootstrap CI; both score
    dicts map attack label → per-sample scores over the same samples, members first."""
    n = len(next(iter(defended.values())))
    members, nonmembers = np.arange(n_members), np.arange(n_members, n)
    delta = _strongest(defended, members, nonmembers) - _strongest(reference, members, nonmembers)
    rng = np.random.default_rng(seed)
    draws = np.empty(n_resamples)
    for i in range(n_resamples):
        m, u = rng.choice(members, members.size), rng.choice(nonmembers, nonmembers.size)
        draws[i] = _strongest(defended, m, u) - _strongest(reference, m, u)
    tail = (1.0 - confidence) / 2.0 * 100.0
    return delta, (float(np.percentile(draws, tail)), float(np.percentile(draws, 100.0 - tail)))


def utility_delta(
    defended: Any, reference: Any, n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, tuple[float, float], str]:
    """Δ ROUGE-L (defended − reference), its CI and how the CI was made (see the module docstring)."""
    delta = float(defended.rouge_l - reference.rouge_l)
    samples = getattr(defended, "rouge_l_samples", None), getattr(reference, "rouge_l_samples", None)
    if samples[0] is not None and samples[1] is not None and len(samples[0]) == len(samples[1]):
        paired = np.asarray(samples[0], dtype=float) - np.asarray(samples[1], dtype=float)
        ci = metrics.mean_ci(paired, n_resamples=n_resamples, confidence=confidence, seed=seed)
        return delta, ci, "paired bootstrap"
    ours, theirs = defended.rouge_l_ci, reference.rouge_l_ci
    half = float(np.hypot((ours[1] - ours[0]) / 2.0, (theirs[1] - theirs[0]) / 2.0))
    return delta, (delta - half, delta + half), "independent approximation"


def _records_by_evaluation(evaluations: Sequence[Any], records: Sequence[Any]) -> list[Any]:
    """The first results record of each evaluation (the runner writes one per attack, in evaluation order)."""
    firsts, position = [], 0
    for evaluation in evaluations:
        record = records[position]
        if record.target != evaluation.target or record.rouge_l != evaluation.rouge_l:
            raise ValueError("records and evaluations are not in the runner's order")
        firsts.append(record)
        position += len(evaluation.attacks) + len(getattr(evaluation, "references", {}))
    return firsts


def defense_deltas(
    evaluations: Sequence[Any], records: Sequence[Any], n_resamples: int = 1000
) -> list[DefenseDelta]:
    """Every defended student of a run against its ``none`` counterpart (cells without one are skipped)."""
    students = [(e, r) for e, r in zip(evaluations, _records_by_evaluation(evaluations, records), strict=True)
                if e.target == "student"]

    def cell(record: Any) -> tuple[Any, ...]:
        models = record.provenance.get("teacher_model"), record.provenance.get("student_model")
        return record.task, record.seed, *models, record.distiller, json.dumps(record.distiller_params, sort_keys=True)

    def undefended(evaluation: Any) -> bool:
        return is_undefended([d.instance for d in evaluation.defenses])

    references = {cell(r): e for e, r in students if undefended(e)}
    out = []
    for evaluation, record in students:
        reference = references.get(cell(record))
        if undefended(evaluation) or reference is None:
            continue
        d_rouge, rouge_ci, method = utility_delta(evaluation, reference, n_resamples, record.seed)
        d_auc, auc_ci = paired_risk_delta(evaluation.scores, reference.scores, evaluation.n_members, n_resamples,
                                          record.seed)
        strongest = max(evaluation.attacks, key=lambda a: evaluation.attacks[a].auc)
        reference_strongest = max(reference.attacks, key=lambda a: reference.attacks[a].auc)
        out.append(DefenseDelta(
            task=record.task, seed=record.seed, teacher=str(record.provenance.get("teacher_model")),
            student=record.model, distiller=str(record.distiller), defense=str(record.defense),
            defense_params=record.defense_params, rouge_l=evaluation.rouge_l, reference_rouge_l=reference.rouge_l,
            delta_rouge_l=d_rouge, delta_rouge_l_ci=rouge_ci, utility_ci=method, attack=strongest,
            auc=evaluation.attacks[strongest].auc, reference_attack=reference_strongest,
            reference_auc=reference.attacks[reference_strongest].auc, delta_auc=d_auc, delta_auc_ci=auc_ci,
            defense_report=getattr(record, "defense_report", {}),
        ))
    return out


def summary(report: dict[str, Any]) -> str:
    """A short line of what the defenses measured, for the table (the full report is in deltas.json)."""
    parts = []
    for values in report.values():
        if values.get("epsilon_spent") is not None:
            parts.append(f"ε spent {values['epsilon_spent']:.2f} (δ {values['delta']:.2g})")
        if "n_kept" in values:
            parts.append(f"kept {values['n_kept']}/{values['n_distillation']}")
        if "n_tokens" in values:
            parts.append(f"{values['n_tokens']} tokens of {values['n_vulnerable']} texts")
        votes = values.get("vote", {})
        parts += [f"{attack} vote BA {vote['balanced_accuracy']:.2f}" for attack, vote in votes.items()]
    return "; ".join(parts)


def write_deltas(out: Path, deltas: Sequence[DefenseDelta]) -> Path:
    """OUT/deltas.json: every defended cell's deltas, CIs and defense report (documented in docs/defenses.md)."""
    path = out / "deltas.json"
    data = {"reference": REFERENCE, "sign": "defended - undefended", "deltas": [d.to_json() for d in deltas]}
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path
