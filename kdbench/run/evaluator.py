"""Evaluates one target model: attacks, memorization and utility on the cell's samples."""

from __future__ import annotations

import numpy as np

from kdbench.core.data import Example
from kdbench.core.errors import KdbenchError
from kdbench.core.registry import Resolved
from kdbench.core.types import TrainedModel
from kdbench.evaluation import metrics
from kdbench.evaluation.attacks import TargetEvaluation, run_attacks
from kdbench.evaluation.memorization import DEFAULT_AGREEMENT_FPR, DEFAULT_THRESHOLD, MemorizationReport, agreement
from kdbench.evaluation.pii import PIILeakage, pii_leakage, secret_values
from kdbench.run import artifacts
from kdbench.run.context import RunContext
from kdbench.run.divergence import teacher_rkl
from kdbench.run.host import RunHost
from kdbench.scoring.context import ScoringContext
from kdbench.scoring.needs import is_reference


class Evaluator:
    """Attacks, memorization and utility on one target model; every statistic comes from cached passes.

    ``teacher`` (default: the run's, from the cache) supplies the per-sample memorization rates the
    teacher-conditioned rate needs; ``memorization_threshold`` is t and ``agreement_fpr`` the FPR at which the
    strongest attack's flags are compared with memorization (kdbench.evaluation.memorization).
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
        self.ctx, self.members, self.nonmembers = ctx, members, nonmembers
        # Membership attacks, and the reference baselines (blind) reported beside them but never counted as one.
        self.attacks = [a for a in attacks if not is_reference(a.instance.needs)]
        self.references = [a for a in attacks if is_reference(a.instance.needs)]
        self.samples = members + nonmembers
        self.eval_examples = ctx.splits.roles["eval"][: ctx.task.evaluation.n_eval]
        self.host = RunHost(ctx)
        self.host.check_needs([(a.label, a.instance.needs) for a in attacks])
        self._teacher = teacher
        self._rates: dict[str, np.ndarray] = {}  # memorization rates by model key (the teacher's are reused)
        self._gold: list[list[int]] | None = None
        self._continued: dict[str, list[list[int]]] = {}  # greedy continuations by model key (a few KB each)
        self.threshold, self.agreement_fpr = memorization_threshold, agreement_fpr

    def __call__(self, target: str, trained: TrainedModel) -> TargetEvaluation:
        ctx, ev, n = self.ctx, self.ctx.task.evaluation, len(self.members)
        scoring = ScoringContext(self.host, trained, self.samples)
        errors: dict[str, str] = {}  # an attack that fails is recorded as such; the others' numbers are kept
        with ctx.timed("attacks"):
            results, all_scores = run_attacks(self.attacks, scoring, n, seed=ctx.seed, n_resamples=ev.bootstrap,
                                              errors=errors)
            references, reference_scores = run_attacks(self.references, scoring, n, seed=ctx.seed,
                                                       n_resamples=ev.bootstrap, errors=errors)
        report = self._memorization(target, trained, results, all_scores)
        leakage = self._pii_leakage(trained)
        per_sample = self._utility(trained)
        rouge_ci = metrics.mean_ci(per_sample, seed=ctx.seed, n_resamples=ev.bootstrap)
        rkl = None
        if target != "teacher":  # how far distillation (or the baseline's fine-tuning) moved it toward the teacher
            self._teacher = self._teacher or ctx.teacher()
            rkl = teacher_rkl(ctx, self._teacher, trained)
        return TargetEvaluation(
            target, trained, float(per_sample.mean()), rouge_ci, report.summary(), results, all_scores,
            [e.id for e in self.samples], n, memorization_report=report, rouge_l_samples=per_sample,
            attack_errors=errors, references=references, reference_scores=reference_scores, teacher_rkl=rkl,
            pii_leakage=leakage.as_dict(),
        )

    def memorization_rates(self, trained: TrainedModel) -> np.ndarray:
        """Per-sample token match rates of greedy continuations (METHODS.md §5), from cached generations."""
        if trained.key not in self._rates:
            ev = self.ctx.task.evaluation
            if self._gold is None:
                eos = self.ctx.tokenizer.eos_token_id
                self._gold = [[t for t in e.response_ids if t != eos] for e in self.ctx.encode(self.samples)]
            rates = metrics.memorization_rates(self._continuations(trained), self._gold,
                                               n_compare=ev.memorization_compare)
            self._rates[trained.key] = rates
        return self._rates[trained.key]

    def _continuations(self, trained: TrainedModel) -> list[list[int]]:
        """Greedy continuations of the attack samples' prompts, read from the cache once per model (memorization
        and PII leakage both read them)."""
        if trained.key not in self._continued:
            self._continued[trained.key] = artifacts.generations(
                self.ctx, trained, self.samples, self.ctx.task.evaluation.memorization_new_tokens)
        return self._continued[trained.key]

    def _pii_leakage(self, trained: TrainedModel) -> PIILeakage:
        """The samples' secret PII values emitted verbatim in the same greedy continuations memorization reads, and
        (``evaluation.pii_samples`` = k > 0) in any of k samples at temperature 1, drawn only for the prompts that
        have a secret value (the others cannot leak one)."""
        ev, template, decode = self.ctx.task.evaluation, self.ctx.task.template, self.ctx.tokenizer.batch_decode
        texts = decode(self._continuations(trained), skip_special_tokens=True)
        prompts = [template.prompt(e) for e in self.samples]
        responses = [e.response for e in self.samples]
        sampled: list[list[str]] | None = None
        k = ev.pii_samples
        if k:
            holders = [i for i, (p, r) in enumerate(zip(prompts, responses, strict=True)) if secret_values(p, r)]
            drawn = decode(artifacts.generations(self.ctx, trained, [self.samples[i] for i in holders],
                                                 ev.memorization_new_tokens, sampled=k), skip_special_tokens=True)
            sampled = [[] for _ in self.samples]
            for n, i in enumerate(holders):
                sampled[i] = drawn[n * k:(n + 1) * k]
        return pii_leakage(prompts, responses, texts, len(self.members), sampled)

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
        generated = artifacts.generations(self.ctx, trained, self.eval_examples, ev.max_new_tokens)
        predictions = self.ctx.tokenizer.batch_decode(generated, skip_special_tokens=True)
        return metrics.rouge_l_per_sample(predictions, [e.response for e in self.eval_examples])
