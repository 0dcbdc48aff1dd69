"""``mink``: Min-K% Prob — the mean of the lowest k% token log-probabilities ([M]; k = 20%).

[Z]'s code averages probabilities instead of log-probabilities; that quirk is available as ``use_probs=true``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdbench.api import AttackInputs, Need, Register, check_range, hookimpl, lowest_k


@dataclass(frozen=True)
class MinKParams:
    k: float = 0.2
    use_probs: bool = False  # [Z]'s quirk: average probabilities rather than log-probabilities

    def __post_init__(self) -> None:
        check_range("mink", "k", self.k, 1e-9, 1.0)


class MinK:
    name = "mink"
    description = "Min-K% Prob: mean of the lowest k% token log-probs (k=20%)."
    Params = MinKParams
    needs = frozenset({Need.TOKEN_STATS})

    def __init__(self, params: MinKParams) -> None:
        self.params = params

    def score(self, inputs: AttackInputs) -> np.ndarray:
        assert inputs.token_stats is not None
        scores = []
        for logprobs in inputs.token_stats.per_sample("logprob"):
            values = np.exp(logprobs) if self.params.use_probs else logprobs
            scores.append(lowest_k(values, self.params.k))
        return np.array(scores)


@hookimpl
def register_attacks(register: Register) -> None:
    register(MinK)
