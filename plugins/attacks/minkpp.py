"""``mink++``: Min-K%++ — per token z_t = (log q(x_t) − μ_t) / σ_t, the mean of the lowest k% ([M]; k = 20%).

μ_t = Σ_v q_v log q_v and σ_t² = Σ_v q_v (log q_v)² − μ_t² come from the shared token statistics. σ_t is
floored at 1e-6 so a (numerically) deterministic prediction gives a large finite z, never a NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdbench.api import AttackInputs, Need, Register, check_range, hookimpl, lowest_k, token_stats_of

SIGMA_FLOOR = 1e-6


@dataclass(frozen=True)
class MinKPlusPlusParams:
    k: float = 0.2

    def __post_init__(self) -> None:
        check_range("mink++", "k", self.k, 1e-9, 1.0)


class MinKPlusPlus:
    name = "mink++"
    description = "Min-K%++: mean of the lowest k% of (log p − μ)/σ per token (k=20%)."
    Params = MinKPlusPlusParams
    needs = frozenset({Need.TOKEN_STATS})

    def __init__(self, params: MinKPlusPlusParams) -> None:
        self.params = params

    def score(self, inputs: AttackInputs) -> np.ndarray:
        stats = token_stats_of(inputs, self.name)
        scores = []
        for logprob, mu, var in zip(*(stats.per_sample(n) for n in ("logprob", "mean_logprob", "var_logprob")),
                                    strict=True):
            z = (logprob - mu) / np.maximum(np.sqrt(var), SIGMA_FLOOR)
            scores.append(lowest_k(z, self.params.k))
        return np.array(scores)


@hookimpl
def register_attacks(register: Register) -> None:
    register(MinKPlusPlus)
