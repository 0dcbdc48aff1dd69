"""Evaluate one target model: every attack (from shared, cached statistics), memorization and utility."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdbench import metrics
from kdbench.cache import atomic_write_text
from kdbench.data import Example
from kdbench.errors import KdbenchError, PluginError
from kdbench.memorization import DEFAULT_AGREEMENT_FPR, DEFAULT_THRESHOLD, MemorizationReport, agreement
from kdbench.protocols import AttackInputs, Need
from kdbench.scoring import RunHost, ScoringContext
from kdbench.stages import RunContext, TrainedModel


@dataclass
class Resolved:
    """An instantiated plugin with its spec label and registry entry."""

    label: str
    instance: Any
    info: Any


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


def run_attacks(
    attacks: Sequence[Resolved], scoring: ScoringContext, n_members: int, *, seed: int, n_resamples: int
) -> tuple[dict[str, metrics.MembershipMetrics], dict[str, np.ndarray]]:
    """Every attack's per-sample scores and metrics (members are the first ``n_members`` samples); each need
    is computed once by ``scoring`` whichever attacks share it."""
    wants_stats = any(Need.TOKEN_STATS in a.instance.needs for a in attacks)
    inputs = AttackInputs(
        samples=scoring.samples, token_stats=scoring.token_stats() if wants_stats else None, scoring=scoring
    )
    results, all_scores = {}, {}
    for attack in attacks:
        scores = _checked_scores(attack, inputs, len(scoring.samples))
        all_scores[attack.label] = scores
        results[attack.label] = metrics.membership_metrics(
            scores[:n_members], scores[n_members:], seed=seed, n_resamples=n_resamples
        )
    return results, all_scores


class Evaluator:
    """Attacks, memorization and utility on one target model; every statistic comes from cached passes.

    ``teacher`` (default: the run's, from the cache) supplies the per-sample memorization rates the
    teacher-conditioned rate needs; ``memorization_threshold`` is t and ``agreement_fpr`` the FPR at which the
    strongest attack's flags are compared with memorization (kdbench.memorization).
    """

    def __init__(
        self,
        ctx: RunContext,
        members: list[Example],
        nonmembers: list[Example],
        attacks: list[Resolved],
        *,
        teacher: TrainedModel | None = None,
        memorization_threshold: float = DEFAULT_THRESHOLD,
        agreement_fpr: float = DEFAULT_AGREEMENT_FPR,
    ) -> None:
        if not (0.0 <= memorization_threshold < 1.0 and 0.0 <= agreement_fpr <= 1.0):
            raise KdbenchError(f"memorization_threshold must lie in [0, 1) and agreement_fpr in [0, 1]; got "
                               f"{memorization_threshold} and {agreement_fpr}.")
        self.ctx, self.members, self.nonmembers, self.attacks = ctx, members, nonmembers, attacks
        self.samples = members + nonmembers
        self.eval_examples = ctx.splits.roles["eval"][: ctx.task.evaluation.n_eval]
        self.host = RunHost(ctx)
        self.host.check_needs([(a.label, a.instance.needs) for a in attacks])
        self._teacher = teacher
        self._rates: dict[str, np.ndarray] = {}  # memorization rates by model key (the teacher's are reused)
        self._gold: list[list[int]] | None = None
        self.threshold, self.agreement_fpr = memorization_threshold, agreement_fpr

    def __call__(self, target: str, trained: TrainedModel) -> TargetEvaluation:
        ctx, ev, n = self.ctx, self.ctx.task.evaluation, len(self.members)
        scoring = ScoringContext(self.host, trained, self.samples)
        with ctx.timed("attacks"):
            results, all_scores = run_attacks(self.attacks, scoring, n, seed=ctx.seed, n_resamples=ev.bootstrap)
        report = self._memorization(target, trained, results, all_scores)
        per_sample = self._utility(trained)
        rouge_ci = metrics.mean_ci(per_sample, seed=ctx.seed, n_resamples=ev.bootstrap)
        return TargetEvaluation(
            target, trained, float(per_sample.mean()), rouge_ci, report.summary(), results, all_scores,
            [e.id for e in self.samples], n, memorization_report=report, rouge_l_samples=per_sample,
        )

    def memorization_rates(self, trained: TrainedModel) -> np.ndarray:
        """Per-sample token match rates of greedy continuations (METHODS.md §5), from cached generations."""
        if trained.key not in self._rates:
            ev = self.ctx.task.evaluation
            if self._gold is None:
                eos = self.ctx.tokenizer.eos_token_id
                self._gold = [[t for t in e.response_ids if t != eos] for e in self.ctx.encode(self.samples)]
            generated = self.ctx.generations(trained, self.samples, ev.memorization_new_tokens)
            rates = metrics.memorization_rates(generated, self._gold, n_compare=ev.memorization_compare)
            self._rates[trained.key] = rates
        return self._rates[trained.key]

    def _memorization(
        self, target: str, trained: TrainedModel, results: dict[str, metrics.MembershipMetrics],
        scores: dict[str, np.ndarray],
    ) -> MemorizationReport:
        n = len(self.members)
        rates = self.memorization_rates(trained)
        teacher_rates = None
        if target != "teacher":
            self._teacher = self._teacher or self.ctx.teacher()
            teacher_rates = self.memorization_rates(self._teacher)[:n]
        found = None
        if results:
            strongest = max(results, key=lambda label: results[label].auc)
            found = agreement(rates[:n] > self.threshold, strongest, scores[strongest][:n], scores[strongest][n:],
                              self.agreement_fpr)
        return MemorizationReport([e.id for e in self.samples], rates, n, self.threshold, teacher_rates, found)

    def _utility(self, trained: TrainedModel) -> np.ndarray:
        """Per-sample ROUGE-L of the greedy continuations of the eval prompts."""
        ev = self.ctx.task.evaluation
        generated = self.ctx.generations(trained, self.eval_examples, ev.max_new_tokens)
        predictions = self.ctx.tokenizer.batch_decode(generated, skip_special_tokens=True)
        return metrics.rouge_l_per_sample(predictions, [e.response for e in self.eval_examples])


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


def score_lines(meta: dict[str, Any], sample_ids: Sequence[str], n_members: int,
                scores: dict[str, np.ndarray]) -> str:
    """Per-sample scores as JSONL: a ``_meta`` line, then {id, member, <attack>: score, ...} per sample."""
    lines = [json.dumps({"_meta": meta})]
    for i, sample_id in enumerate(sample_ids):
        row: dict[str, Any] = {"id": sample_id, "member": i < n_members}
        row.update({label: float(values[i]) for label, values in scores.items()})
        lines.append(json.dumps(row))
    return "\n".join(lines) + "\n"


def write_scores(out: Path, evaluation: TargetEvaluation) -> None:
    """Per-sample scores of every attack, with membership labels, so anyone can recompute the metrics."""
    directory = out / "scores"
    directory.mkdir(exist_ok=True)
    name = f"{evaluation.target}-{evaluation.trained.key[:12]}"
    meta = {"target": evaluation.target, "label": evaluation.trained.label, "model_key": evaluation.trained.key}
    text = score_lines(meta, evaluation.sample_ids, evaluation.n_members, evaluation.scores)
    atomic_write_text(directory / f"{name}.jsonl", text)


def write_memorization(out: Path, evaluations: Sequence[TargetEvaluation]) -> Path | None:
    """OUT/memorization.json: every target's memorization report (documented in docs/results.md)."""
    reports = [(e, e.memorization_report) for e in evaluations if e.memorization_report is not None]
    if not reports:
        return None
    first = reports[0][1]
    data = {
        "threshold": first.threshold,
        "agreement_fpr": first.agreement.fpr if first.agreement else None,
        "targets": [
            {"target": e.target, "label": e.trained.label, "model_key": e.trained.key, **report.to_json()}
            for e, report in reports
        ],
    }
    path = out / "memorization.json"
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path
