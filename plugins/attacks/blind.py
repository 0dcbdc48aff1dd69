"""``blind``: a reference baseline that never looks at a model (Das et al. 2024; Meeus et al. 2024).

TF-IDF word and character n-grams of each sample's text (instruction, context and response) and a logistic
regression, scored out of fold: the samples are split into ``folds`` stratified folds and each fold is scored by a
classifier fitted on the others, so no sample is scored by a model that saw its label. Its AUC measures how well the
members can be told from the non-members by their text alone, i.e. the distribution shift between the two sets;
0.5 means none. When it is above chance, a membership attack's AUC mixes leakage with that shift (docs/attacks.md).

Score = the classifier's log-odds of "member" (higher = more likely member, like every attack).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline, make_union

from kdbench.api import AttackInputs, Example, KdbenchError, Need, ParameterError, Register, check_range, hookimpl


@dataclass(frozen=True)
class BlindParams:
    folds: int = 5  # stratified folds; each sample is scored by the classifier fitted on the other folds
    word_ngrams: int = 2  # word n-grams of length 1..word_ngrams
    char_ngrams: int = 5  # character n-grams (within word boundaries) of length 2..char_ngrams
    c: float = 1.0  # inverse L2 regularization strength of the logistic regression
    seed: int = 0  # shuffles the folds

    def __post_init__(self) -> None:
        check_range("blind", "folds", self.folds, low=2)
        check_range("blind", "word_ngrams", self.word_ngrams, low=1)
        check_range("blind", "char_ngrams", self.char_ngrams, low=2)
        if not self.c > 0:
            raise ParameterError(f"blind: c={self.c!r} must be positive.")


def text_of(example: Example) -> str:
    """Everything a sample shows without a model: instruction, context and response."""
    return "\n".join(part for part in (example.instruction, example.context, example.response) if part)


def classifier(params: BlindParams) -> Pipeline:
    """TF-IDF word and character n-grams, then an L2 logistic regression (a fresh, unfitted pipeline)."""
    features = make_union(
        TfidfVectorizer(analyzer="word", ngram_range=(1, params.word_ngrams), sublinear_tf=True),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, params.char_ngrams), sublinear_tf=True),
    )
    return make_pipeline(features, LogisticRegression(C=params.c, max_iter=1000))


def folds(params: BlindParams) -> StratifiedKFold:
    return StratifiedKFold(n_splits=params.folds, shuffle=True, random_state=params.seed)


class Blind:
    name = "blind"
    description = ("Reference, no model: TF-IDF n-grams + logistic regression, out of fold; AUC = distribution "
                   "shift between members and non-members (0.5 = none).")
    Params = BlindParams
    needs = frozenset({Need.MEMBERSHIP_LABELS})

    def __init__(self, params: BlindParams) -> None:
        self.params = params

    def score(self, inputs: AttackInputs) -> np.ndarray:
        if inputs.membership is None:
            raise KdbenchError("Attack 'blind' needs the membership labels to cross-validate on "
                               "(Need.MEMBERSHIP_LABELS); run it through kdbench run, audit or tasks verify --blind.")
        labels = np.asarray(inputs.membership, dtype=bool)
        smallest = int(min(labels.sum(), (~labels).sum()))
        if smallest < self.params.folds:
            raise KdbenchError(f"Attack 'blind' needs at least folds={self.params.folds} members and as many "
                               f"non-members; got {smallest}. Lower folds (blind:folds=2) or use more samples.")
        texts = np.array([text_of(e) for e in inputs.samples], dtype=object)
        scores = np.zeros(len(texts), dtype=np.float64)
        for train, test in folds(self.params).split(texts, labels):
            model = classifier(self.params).fit(texts[train], labels[train])
            scores[test] = model.decision_function(texts[test])
        return scores


@hookimpl
def register_attacks(register: Register) -> None:
    register(Blind)
