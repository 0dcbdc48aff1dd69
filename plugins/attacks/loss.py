"""``loss``: the mean token NLL of the response; members have lower loss, so the score is −NLL ([M], [Z])."""

from __future__ import annotations

import numpy as np

from kdbench.api import AttackInputs, Need, NoParams, Register, hookimpl


class LossAttack:
    name = "loss"
    description = "Mean response-token loss (higher score = lower loss = more likely member)."
    Params = NoParams
    needs = frozenset({Need.TOKEN_STATS})

    def __init__(self, params: NoParams) -> None:
        self.params = params

    def score(self, inputs: AttackInputs) -> np.ndarray:
        assert inputs.token_stats is not None
        return np.array([float(lp.mean()) for lp in inputs.token_stats.per_sample("logprob")])


@hookimpl
def register_attacks(register: Register) -> None:
    register(LossAttack)
