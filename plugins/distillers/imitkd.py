"""``imitkd``: ImitKD (Lin et al., EMNLP 2020) as DistiLLM runs it for [Z]: every step the student answers the
batch's prompts, the answers join a replay buffer (capacity 1000) and the step trains with fkl on a batch drawn
from the buffer (METHODS.md §3). The teacher runs live on these sequences; nothing teacher-side is cached."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from kdbench.api import (
    REPLAY_CAPACITY,
    DistillerParams,
    DistillJob,
    MixedSampling,
    ObjectiveName,
    Observer,
    Register,
    distillation_loss,
    hookimpl,
)


@dataclass(frozen=True)
class ImitKDParams(DistillerParams):
    """[Z]: fkl, student samples with probability 1.0, kd_ratio 1.0, replay capacity 1000. ``max_new_tokens``:
    None = up to the task's total length. ``lr``/``epochs``: None = the task's student config ([Z]'s 5e-4 is
    for pretrained students)."""

    objective: ObjectiveName = "fkl"
    student_fraction: float = 1.0
    capacity: int = REPLAY_CAPACITY
    max_new_tokens: int | None = None

    plugin: ClassVar[str] = "imitkd"
    probabilities: ClassVar[tuple[str, ...]] = ("student_fraction",)
    positives: ClassVar[tuple[str, ...]] = ("capacity", "max_new_tokens")


class ImitKD:
    name = "imitkd"
    description = "ImitKD: fkl on the student's own samples, drawn through a replay buffer, every step."
    Params = ImitKDParams

    def __init__(self, params: ImitKDParams) -> None:
        self.params = params
        self.observers: list[Observer] = []

    def distill(self, job: DistillJob) -> Any:
        p = self.params
        strategy = MixedSampling(job, p.student_fraction, p.capacity, p.max_new_tokens, self.observers)
        job.train(distillation_loss(job, p.objective, p.kd_ratio), job.with_overrides(p.lr, p.epochs), strategy)
        return job.student


@hookimpl
def register_distillers(register: Register) -> None:
    register(ImitKD)
