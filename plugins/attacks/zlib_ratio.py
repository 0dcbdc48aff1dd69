"""``zlib``: loss over zlib entropy — mean NLL / len(zlib.compress(text bytes)) of the **true** text ([M]).

Oriented: score = −NLL / zlib length (members have low loss relative to how compressible their text is).
[Z]'s code compresses the model's argmax decode instead of the text; that quirk is ``argmax_decode=true``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from kdbench.api import AttackInputs, Need, Register, hookimpl, mean_logprob, scoring_context, token_stats_of


@dataclass(frozen=True)
class ZlibParams:
    argmax_decode: bool = False  # [Z]'s quirk: compress the greedy per-position predictions, decoded


def zlib_length(text: str) -> int:
    return len(zlib.compress(text.encode("utf-8")))


class Zlib:
    name = "zlib"
    description = "Loss / zlib-compressed length of the true text (higher score = more likely member)."
    Params = ZlibParams
    needs = frozenset({Need.TOKEN_STATS})

    def __init__(self, params: ZlibParams) -> None:
        self.params = params

    def score(self, inputs: AttackInputs) -> np.ndarray:
        logprob = mean_logprob(token_stats_of(inputs, self.name))
        if self.params.argmax_decode:
            scoring = scoring_context(inputs, self.name)
            texts = scoring.host.tokenizer.batch_decode([ids.tolist() for ids in scoring.argmax_ids()])
        else:
            texts = [e.response for e in inputs.samples]
        return logprob / np.array([zlib_length(t) for t in texts], dtype=np.float64)


@hookimpl
def register_attacks(register: Register) -> None:
    register(Zlib)
