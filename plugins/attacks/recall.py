"""``recall``: ReCaLL — LL(x | non-member prefix) / LL(x) (Xie et al. 2024), LL = mean response-token
log-likelihood.

A non-member prefix lowers the likelihood of a member more than that of a non-member, so the ratio (of two
negative numbers) is higher for members: already oriented. The prefix is ``shots`` texts drawn with ``seed``
from the ``eval`` split (no model trains on it; in ``kdbench audit``, from ``--reference-text``), cut from its
start to ``max_prefix_tokens`` and to what fits the model's context beside each sample. LL(x) is capped at
−1e-12 so a perfectly predicted text gives a large finite ratio, not a division by zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdbench.api import (
    AttackInputs,
    Need,
    Register,
    check_range,
    hookimpl,
    mean_logprob,
    scoring_context,
    token_stats_of,
)

LL_CAP = -1e-12


@dataclass(frozen=True)
class RecallParams:
    shots: int = 3
    seed: int = 0
    max_prefix_tokens: int = 512

    def __post_init__(self) -> None:
        check_range("recall", "shots", self.shots, 1)
        check_range("recall", "max_prefix_tokens", self.max_prefix_tokens, 1)


class Recall:
    name = "recall"
    description = "ReCaLL: LL(x | non-member prefix) / LL(x), prefixes from the eval split."
    Params = RecallParams
    needs = frozenset({Need.TOKEN_STATS, Need.TEXT_VARIANTS, Need.NONMEMBER_TEXT})

    def __init__(self, params: RecallParams) -> None:
        self.params = params

    def score(self, inputs: AttackInputs) -> np.ndarray:
        p = self.params
        scoring = scoring_context(inputs, self.name)
        conditional = mean_logprob(scoring.prefixed_stats(p.shots, p.seed, p.max_prefix_tokens))
        unconditional = np.minimum(mean_logprob(token_stats_of(inputs, self.name)), LL_CAP)
        return conditional / unconditional


@hookimpl
def register_attacks(register: Register) -> None:
    register(Recall)
