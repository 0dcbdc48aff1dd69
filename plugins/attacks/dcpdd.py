"""``dc-pdd``: divergence-based calibration (Zhang et al. 2024, "Pretraining Data Detection for LLMs").

Per response token, α_t = −p(x_t) · log f(x_t): the model's probability of the token times its surprisal under
token frequencies f counted on a reference corpus (the public split; Laplace-smoothed, f = (c + 1) / (N + |V|)).
α_t is clipped at ``a`` (default 0.01, the paper's), and the score is the mean over each token id's **first**
occurrence in the text. Higher = more likely member, as published.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdbench.api import AttackInputs, Need, Register, check_range, hookimpl, scoring_context, token_stats_of


@dataclass(frozen=True)
class DCPDDParams:
    a: float = 0.01

    def __post_init__(self) -> None:
        check_range("dc-pdd", "a", self.a, 1e-12)


class DCPDD:
    name = "dc-pdd"
    description = "DC-PDD: token probabilities calibrated by public-split token frequencies."
    Params = DCPDDParams
    needs = frozenset({Need.TOKEN_STATS, Need.TOKEN_FREQUENCIES})

    def __init__(self, params: DCPDDParams) -> None:
        self.params = params

    def score(self, inputs: AttackInputs) -> np.ndarray:
        scoring = scoring_context(inputs, self.name)
        counts = scoring.token_frequencies()
        log_frequency = np.log((counts + 1.0) / (counts.sum() + len(counts)))
        unseen = np.log(1.0 / (counts.sum() + len(counts)))  # a token id beyond the counted vocabulary
        scores = []
        for ids, logprob in zip(scoring.scored_token_ids(), token_stats_of(inputs, self.name).per_sample("logprob"),
                                strict=True):
            log_f = np.where(ids < len(counts), log_frequency[np.minimum(ids, len(counts) - 1)], unseen)
            alpha = np.minimum(-np.exp(logprob) * log_f, self.params.a)
            first = np.unique(ids, return_index=True)[1]
            scores.append(float(alpha[first].mean()))
        return np.array(scores)


@hookimpl
def register_attacks(register: Register) -> None:
    register(DCPDD)
