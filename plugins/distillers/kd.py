"""``kd``: word-level KD on the ground-truth responses of the distillation set (METHODS.md §3).

Loss = (1 − kd_ratio)·CE(gold) + kd_ratio·fkl(teacher ‖ student), response tokens only; [Z] uses kd_ratio 1.0.
The teacher's outputs on the (fixed) ground truth are computed once and cached as top-k log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from kdbench.api import (
    DEFAULT_TOP_K,
    DistillerParams,
    DistillJob,
    GroundTruth,
    ObjectiveName,
    Observer,
    Register,
    chain,
    distillation_loss,
    hookimpl,
    teacher_hook,
)


@dataclass(frozen=True)
class KDParams(DistillerParams):
    """[Z]'s KD arm: forward KL, kd_ratio 1.0. ``lr``/``epochs``: None = the task's student training config
    ([Z]'s 5e-5 and 10 epochs are for pretrained GPT-2/OPT students, not tiny ones trained from scratch).
    ``top_k``: teacher log-probs cached per position (see :mod:`kdbench.distill.teacher_outputs`)."""

    objective: ObjectiveName = "fkl"
    top_k: int = DEFAULT_TOP_K

    plugin: ClassVar[str] = "kd"
    positives: ClassVar[tuple[str, ...]] = ("top_k",)


class KD:
    name = "kd"
    description = "Forward-KL (word-level) KD on ground-truth responses, [Z]'s KD arm."
    Params = KDParams

    def __init__(self, params: KDParams) -> None:
        self.params = params
        self.observers: list[Observer] = []  # see the sequences each step trains on

    def distill(self, job: DistillJob) -> Any:
        p = self.params
        prepare = chain(GroundTruth(self.observers), teacher_hook(job, k=p.top_k))
        job.train(distillation_loss(job, p.objective, p.kd_ratio), job.with_overrides(p.lr, p.epochs), prepare)
        return job.student


@hookimpl
def register_distillers(register: Register) -> None:
    register(KD)
