"""``sft``: the no-KD baseline as a distiller: cross-entropy on the ground-truth responses of the distillation
set; the teacher is never run. Trained like every student (same loop, data, defenses), it is the lower
reference of METHODS.md §1 inside a distiller grid, e.g. under a defense that changes the student."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kdbench.api import (
    DistillJob,
    GroundTruth,
    Observer,
    Register,
    check_lm_coef,
    check_overrides,
    hookimpl,
    sft_loss,
    train_loop,
)


@dataclass(frozen=True)
class SFTParams:
    """``lr``/``epochs``: None = the task's student training config. ``lm_coef``: weight of the language-modelling
    term on pre-training text (0 = none)."""

    lr: float | None = None
    epochs: int | None = None
    lm_coef: float = 0.0

    def __post_init__(self) -> None:
        check_overrides("sft", self.lr, self.epochs)
        check_lm_coef("sft", self.lm_coef)


class SFT:
    name = "sft"
    description = "No-KD baseline: cross-entropy on the ground truth, no teacher."
    Params = SFTParams

    def __init__(self, params: SFTParams) -> None:
        self.params = params
        self.observers: list[Observer] = []

    def distill(self, job: DistillJob) -> Any:
        # train_loop directly: DistillJob.train would move the teacher to the device, and sft never needs it.
        config = job.with_overrides(self.params.lr, self.params.epochs)
        loss = job.with_lm_term(sft_loss)
        train_loop(job.student, job.data, loss, config, job.loop_settings(GroundTruth(self.observers)))
        return job.student


@hookimpl
def register_distillers(register: Register) -> None:
    register(SFT)
