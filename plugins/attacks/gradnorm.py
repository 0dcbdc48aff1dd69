"""``gradnorm`` (white-box): the norm of the parameter gradient of the sample's loss ([M]).

Members sit near a minimum of the loss, so their gradients are small: score = −norm. ``reduce=mean`` is
MIMIR's (the mean over parameter tensors of each tensor's p-norm); ``reduce=global`` is the p-norm of all
gradients together. The loss is the mean response-token NLL of one sample (one backward pass per sample).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from kdbench.api import AttackInputs, Need, ParameterError, Register, hookimpl, scoring_context


@dataclass(frozen=True)
class GradNormParams:
    p: float = 2.0
    reduce: Literal["mean", "global"] = "mean"

    def __post_init__(self) -> None:
        if self.p not in (1.0, 2.0, math.inf):
            raise ParameterError(f"gradnorm: p={self.p!r} must be 1, 2 or inf.")


class GradNorm:
    name = "gradnorm"
    description = "White-box: −(norm of the loss gradient w.r.t. the parameters)."
    Params = GradNormParams
    needs = frozenset({Need.WHITE_BOX})

    def __init__(self, params: GradNormParams) -> None:
        self.params = params

    def score(self, inputs: AttackInputs) -> np.ndarray:
        return -scoring_context(inputs, self.name).gradient_norms(self.params.p, self.params.reduce)


@hookimpl
def register_attacks(register: Register) -> None:
    register(GradNorm)
