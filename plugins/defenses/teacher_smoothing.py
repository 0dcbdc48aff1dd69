"""``teacher-smoothing``: the student learns from a smoothed teacher. ``mode=temperature`` divides the teacher's
logits by ``temperature`` (> 1 flattens the soft labels); ``mode=top_k`` keeps only the ``top_k`` most likely
tokens, renormalised (the other tokens get probability 0). Acts on the full logits, before the top-k cache of
:mod:`kdbench.distill.teacher_outputs`, whose key includes this defense and its parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from kdbench.api import DefenseBase, KdbenchError, ParameterError, Register, hookimpl

TRUNCATED = 1e4
"""How far below the k-th logit the dropped tokens are put: exp(−1e4) is exactly 0 in float32, yet every
log-probability stays finite, so no objective meets 0·(−inf)."""


@dataclass(frozen=True)
class TeacherSmoothingParams:
    mode: Literal["temperature", "top_k"] = "temperature"
    temperature: float = 2.0
    top_k: int = 10

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ParameterError(f"teacher-smoothing: temperature={self.temperature!r} must be positive.")
        if self.top_k < 1:
            raise ParameterError(f"teacher-smoothing: top_k={self.top_k!r} must be at least 1.")


class TeacherSmoothing(DefenseBase):
    name = "teacher-smoothing"
    description = "Soft labels flattened by a temperature (default 2) or truncated to the teacher's top-k."
    Params = TeacherSmoothingParams
    stages: ClassVar[frozenset[str]] = frozenset({"teacher_outputs"})

    def check(self, model_config: Any, distiller: str) -> None:
        if distiller == "sft":
            raise KdbenchError("teacher-smoothing changes the teacher's outputs, but the sft distiller never reads "
                               "the teacher; the defense would do nothing.")

    def transform_teacher_logits(self, logits: torch.Tensor) -> torch.Tensor:
        if self.params.mode == "temperature":
            return logits / self.params.temperature
        values, indices = logits.topk(min(self.params.top_k, logits.shape[-1]), dim=-1)
        floor = values[..., -1:] - TRUNCATED
        return floor.expand_as(logits).scatter(-1, indices, values)


@hookimpl
def register_defenses(register: Register) -> None:
    register(TeacherSmoothing)
