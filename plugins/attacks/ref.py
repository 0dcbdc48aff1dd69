"""``ref``: reference-model calibration — NLL_target − NLL_reference ([M], [Z]), oriented as
NLL_reference − NLL_target (a member is easier for the target than for a model that never saw it).

``model`` picks the reference: ``auto`` (default: the target's pretrained base; for built-in presets, whose
base is a random initialisation, ``public``), ``base``, ``public`` (the target's architecture fine-tuned on the
public split — a same-domain model; for students, the no-KD baseline itself), ``baseline`` (the task's no-KD
baseline), or any model name / path (its own tokenizer is used when it differs). In ``kdbench audit`` use
``--base`` or a path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdbench.api import AttackInputs, Need, Register, hookimpl, mean_logprob, scoring_context, token_stats_of


@dataclass(frozen=True)
class RefParams:
    model: str = "auto"


class Ref:
    name = "ref"
    description = "Reference calibration: NLL(reference) − NLL(target) (reference: base, public-trained or a path)."
    Params = RefParams
    needs = frozenset({Need.TOKEN_STATS, Need.REFERENCE_MODEL})

    def __init__(self, params: RefParams) -> None:
        self.params = params

    def score(self, inputs: AttackInputs) -> np.ndarray:
        target = mean_logprob(token_stats_of(inputs, self.name))
        return target - scoring_context(inputs, self.name).reference_logprob(self.params.model)


@hookimpl
def register_attacks(register: Register) -> None:
    register(Ref)
