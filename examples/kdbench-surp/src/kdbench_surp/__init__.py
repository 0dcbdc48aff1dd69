"""``surp``: the SURP membership-inference attack — the mean log-probability of a text's *surprising tokens*.

Zhang & Wu, "Adaptive Pre-training Data Detection for Large Language Models via Surprising Tokens",
arXiv:2407.21248 (2024). A token is surprising when the model is "certain but wrong": the entropy of its
next-token distribution is low while the probability of the true token is low too. The hypothesis: a model is
less surprised by text it was trained on, so the surprising tokens of a member keep a higher probability.

For a text's response tokens x_1..x_n with q_t = p(x_t | x_<t) and entropy H_t = −Σ_v p_v log p_v:
    S = { t : H_t < max_entropy  and  q_t is among the k-fraction lowest of the text }
    score = mean_{t ∈ S} log q_t        (higher = less surprised = more likely a member)
kdbench's token statistics give log q_t (``logprob``) and μ_t = Σ_v p_v log p_v (``mean_logprob``), so
H_t = −μ_t: SURP needs no forward pass of its own.

When no token is surprising (the model is uncertain wherever it is wrong), the score falls back to Min-K%
(the mean log-probability of the k-fraction lowest tokens) on the same scale; the definition leaves this case
open (a public reimplementation maps it to a constant −100).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdbench.api import AttackInputs, Need, Register, check_range, hookimpl


@dataclass(frozen=True)
class SurpParams:
    """``--attack surp:k=0.2,max_entropy=2.0``."""

    k: float = 0.2  # fraction of the lowest-probability tokens that may be surprising (the paper's ε_p)
    max_entropy: float = 2.0  # entropy threshold ε_e, in nats: below it, the model is "certain"

    def __post_init__(self) -> None:
        check_range("surp", "k", self.k, 1e-9, 1.0)
        check_range("surp", "max_entropy", self.max_entropy, 0.0)


def surp_score(logprob: np.ndarray, entropy: np.ndarray, k: float, max_entropy: float) -> float:
    """SURP for one text, given its per-token log-probabilities and entropies."""
    if len(logprob) == 0:
        return 0.0
    n = max(1, int(len(logprob) * k))  # as Min-K%: at least one token
    lowest = np.argsort(logprob, kind="stable")[:n]
    surprising = lowest[entropy[lowest] < max_entropy]
    chosen = surprising if len(surprising) else lowest
    return float(logprob[chosen].mean())


class Surp:
    name = "surp"
    description = "SURP (Zhang & Wu 2024): mean log-prob of low-entropy, low-probability tokens."
    Params = SurpParams
    needs = frozenset({Need.TOKEN_STATS})

    def __init__(self, params: SurpParams) -> None:
        self.params = params

    def score(self, inputs: AttackInputs) -> np.ndarray:
        assert inputs.token_stats is not None, "surp needs token statistics (needs = {Need.TOKEN_STATS})"
        stats = inputs.token_stats
        pairs = zip(stats.per_sample("logprob"), stats.per_sample("mean_logprob"), strict=True)
        return np.array([surp_score(lp, -mu, self.params.k, self.params.max_entropy) for lp, mu in pairs])


@hookimpl
def register_attacks(register: Register) -> None:
    register(Surp)
