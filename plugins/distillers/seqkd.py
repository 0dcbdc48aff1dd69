"""``seqkd``: sequence-level KD (Kim & Rush 2016) as [Z] runs it: the teacher answers every prompt of the
distillation set once, by pure ancestral sampling (T 1.0, top-k 0, top-p 1.0), and the student is trained with
fkl to the teacher's distributions on those teacher-sampled sequences (not plain SFT on them; METHODS.md §3).

Both the samples and the teacher's top-k outputs on them are cached, so a second run samples nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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
    teacher_samples,
)


@dataclass(frozen=True)
class SeqKDParams(DistillerParams):
    """[Z]: fkl, kd_ratio 1.0, one sample per prompt. ``max_new_tokens``: None = up to the task's total length
    (and the models' position limit). ``lr``/``epochs``: None = the task's student config ([Z]'s 5e-4 is for
    pretrained students)."""

    objective: ObjectiveName = "fkl"
    top_k: int = DEFAULT_TOP_K
    max_new_tokens: int | None = None

    plugin: ClassVar[str] = "seqkd"
    positives: ClassVar[tuple[str, ...]] = ("top_k", "max_new_tokens")


class SeqKD:
    name = "seqkd"
    description = "Sequence-level KD: fkl on teacher-sampled responses, sampled once and cached."
    Params = SeqKDParams

    def __init__(self, params: SeqKDParams) -> None:
        self.params = params
        self.observers: list[Observer] = []

    def distill(self, job: DistillJob) -> Any:
        p = self.params
        sampled = replace(job, data=teacher_samples(job, p.max_new_tokens))
        prepare = chain(GroundTruth(self.observers), teacher_hook(sampled, k=p.top_k))
        loss = distillation_loss(sampled, p.objective, p.kd_ratio)
        sampled.train(loss, job.with_overrides(p.lr, p.epochs), prepare)
        return job.student


@hookimpl
def register_distillers(register: Register) -> None:
    register(SeqKD)
