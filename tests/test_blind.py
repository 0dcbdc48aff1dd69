"""The ``blind`` reference baseline: out-of-fold scores against scikit-learn's own cross_val_predict, its
orientation on sets that differ, and that only reference baselines are given the membership labels."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline, make_union

from kdbench.cli import main
from kdbench.core.data import Example
from kdbench.core.errors import KdbenchError
from kdbench.core.params import PluginSpec, build_params
from kdbench.core.registry import get_registry
from kdbench.evaluation.attacks import run_attacks
from kdbench.run.plan import resolve
from kdbench.scoring.inputs import AttackInputs
from tests.conftest import TINY_TASK

WORDS = ("alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "paper", "green", "seven", "market", "window",
         "violet", "orange", "tiger", "silver", "music", "winter", "table", "garden")


def examples(n: int, seed: int, words: tuple[str, ...] | list[str] = WORDS, prefix: str = "s") -> list[Example]:
    rng = random.Random(seed)
    return [Example(f"{prefix}{i}", " ".join(rng.choices(words, k=6)), "", " ".join(rng.choices(words, k=12)),
                    "test") for i in range(n)]


def blind(**params: Any) -> Any:
    info = get_registry().get("attacks", "blind")
    return info.cls(build_params(info.cls.Params, tuple((k, str(v)) for k, v in params.items()), owner="blind"))


def sklearn_oof(samples: list[Example], labels: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """docs/attacks.md's definition, written with scikit-learn's own cross-validation."""
    texts = ["\n".join(p for p in (e.instruction, e.context, e.response) if p) for e in samples]
    pipeline = make_pipeline(
        make_union(TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True),
                   TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)),
        LogisticRegression(C=1.0, max_iter=1000),
    )
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return np.asarray(cross_val_predict(pipeline, texts, labels, cv=cv, method="decision_function"))


def test_scores_are_sklearns_out_of_fold_decision_function() -> None:
    samples = examples(30, seed=1) + examples(30, seed=2, words=WORDS[:14])  # a mild shift in vocabulary
    labels = np.arange(60) < 30
    got = blind(folds=4, seed=3).score(AttackInputs(samples=samples, membership=labels))
    np.testing.assert_allclose(got, sklearn_oof(samples, labels, folds=4, seed=3), rtol=1e-9, atol=1e-12)


def test_disjoint_vocabularies_are_told_apart_members_scoring_higher() -> None:
    samples = examples(20, seed=1, words=WORDS[:10]) + examples(20, seed=2, words=WORDS[10:])
    labels = np.arange(40) < 20
    got = blind().score(AttackInputs(samples=samples, membership=labels))
    assert roc_auc_score(labels, got) == 1.0


def test_run_attacks_gives_labels_to_reference_baselines_only() -> None:
    """blind beside an ordinary attack: blind gets the labels (members first), the other attack gets None."""
    samples = examples(20, seed=1, words=WORDS[:10]) + examples(20, seed=2, words=WORDS[10:])
    attacks = resolve(get_registry(), "attacks", [PluginSpec("blind")])
    seen: list[Any] = []

    class Spy:  # a minimal attack that records its inputs
        needs: frozenset[str] = frozenset()
        params = None

        def score(self, inputs: AttackInputs) -> np.ndarray:
            seen.append(inputs.membership)
            return np.zeros(len(inputs.samples))

    spy = SimpleNamespace(label="spy", instance=Spy(), info=SimpleNamespace(distribution="tests"))
    results, scores = run_attacks([*attacks, spy], SimpleNamespace(samples=samples), 20, seed=0, n_resamples=200)
    assert seen == [None]
    assert results["blind"].auc == 1.0 and results["spy"].auc == 0.5
    assert roc_auc_score(np.arange(40) < 20, scores["blind"]) == 1.0


def test_without_labels_or_with_too_few_samples_it_says_what_to_do() -> None:
    with pytest.raises(KdbenchError, match="needs the membership labels"):
        blind().score(AttackInputs(samples=examples(10, 0)))
    with pytest.raises(KdbenchError, match="at least folds=5 members"):
        blind().score(AttackInputs(samples=examples(8, 0), membership=np.arange(8) < 4))


def test_tasks_verify_blind_reports_the_auc_on_the_runs_attack_samples() -> None:
    """The JSON verdict's AUC equals scikit-learn's AUC of out-of-fold scores on the members and non-members
    `kdbench run` draws for the task."""
    from kdbench.run.cells import attack_samples
    from kdbench.tasks.manifest import load_task
    from kdbench.tasks.splits import make_splits

    result = CliRunner().invoke(main, ["tasks", "verify", str(TINY_TASK), "--blind", "--json"])
    (verdict,) = json.loads(result.output)
    task = load_task(str(TINY_TASK))
    members, nonmembers = attack_samples(task, make_splits(task))
    samples = members + nonmembers
    labels = np.arange(len(samples)) < len(members)
    scores = sklearn_oof(samples, labels)
    assert verdict["blind"]["n_members"] == len(members) == 30
    assert verdict["blind"]["auc"] == pytest.approx(roc_auc_score(labels, scores))
    lo, hi = verdict["blind"]["auc_ci"]
    assert lo <= verdict["blind"]["auc"] <= hi and verdict["blind"]["confounded"] == (lo > 0.5)
