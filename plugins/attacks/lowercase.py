"""``lowercase``: how much worse the target predicts the lowercased text (Carlini et al. 2021).

A memorised text keeps its exact casing; lowercasing it costs more loss than it costs an unseen text. Oriented
scores: ``difference`` (default) = NLL(lowercased) − NLL(text); ``ratio`` = −NLL(text) / NLL(lowercased), the
negated ratio of log-perplexities Carlini et al. rank by. Only the response is lowercased (the scored tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from kdbench.api import AttackInputs, Need, Register, hookimpl, mean_logprob, scoring_context, token_stats_of

EPS = 1e-12  # keeps the ratio finite when a lowercased text is predicted perfectly


@dataclass(frozen=True)
class LowercaseParams:
    mode: Literal["difference", "ratio"] = "difference"


class Lowercase:
    name = "lowercase"
    description = "NLL(lowercased text) − NLL(text) (or the negated ratio): memorised casing."
    Params = LowercaseParams
    needs = frozenset({Need.TOKEN_STATS, Need.TEXT_VARIANTS})

    def __init__(self, params: LowercaseParams) -> None:
        self.params = params

    def score(self, inputs: AttackInputs) -> np.ndarray:
        nll = -mean_logprob(token_stats_of(inputs, self.name))
        nll_lower = -mean_logprob(scoring_context(inputs, self.name).lowercase_stats())
        if self.params.mode == "ratio":
            return -nll / np.maximum(nll_lower, EPS)
        return nll_lower - nll


@hookimpl
def register_attacks(register: Register) -> None:
    register(Lowercase)
