"""``mope`` (white-box): MoPe — NLL(θ) − mean_k NLL(θ + ε_k), ε_k ~ N(0, σ²) on every weight (Li et al. 2023).

Oriented: mean_k NLL(θ + ε_k) − NLL(θ) (a member's loss rises more when the weights move). Copy k uses seed k
(1..copies). [Z]: 10 copies, σ 0.01 for students / 0.005 for teachers; ``sigma`` unset picks 0.005 for the
teacher and audited models (fine-tuned on the data directly) and 0.01 for students and the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdbench.api import AttackInputs, Need, Register, check_range, hookimpl, scoring_context

SIGMA_TEACHER, SIGMA_STUDENT = 0.005, 0.01
DIRECTLY_TRAINED = ("teacher", "target")  # roles whose weights were fit on the members themselves


@dataclass(frozen=True)
class MoPeParams:
    copies: int = 10
    sigma: float | None = None

    def __post_init__(self) -> None:
        check_range("mope", "copies", self.copies, 1)
        if self.sigma is not None:
            check_range("mope", "sigma", self.sigma, 1e-12)


class MoPe:
    name = "mope"
    description = "White-box MoPe: loss increase under Gaussian weight perturbation (10 copies)."
    Params = MoPeParams
    needs = frozenset({Need.TOKEN_STATS, Need.WHITE_BOX})

    def __init__(self, params: MoPeParams) -> None:
        self.params = params

    def score(self, inputs: AttackInputs) -> np.ndarray:
        scoring = scoring_context(inputs, self.name)
        sigma = self.params.sigma
        if sigma is None:
            sigma = SIGMA_TEACHER if scoring.target.role in DIRECTLY_TRAINED else SIGMA_STUDENT
        return scoring.mope(sigma, self.params.copies)


@hookimpl
def register_attacks(register: Register) -> None:
    register(MoPe)
