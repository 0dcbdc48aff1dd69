"""``gkd``: Generalized KD (Agarwal et al., ICLR 2024) as DistiLLM runs it for [Z]: each step, with probability
``lmbda`` the student answers the batch's prompts and the step trains on a batch drawn from a replay buffer of
such answers (capacity 1000), else on the ground truth; the loss is the generalised JSD (METHODS.md §3).

Parameter names follow the GKD paper and TRL's ``GKDConfig``: ``lmbda`` is the student-data fraction (0.5 in
[Z]) and ``beta`` the JSD interpolation of TRL (β = 0 forward KL, β = 1 reverse KL). [Z]/DistiLLM's jsd weight
λ = 0.9 is β = 0.1 (``objectives.jsd_from_trl_beta``); at β = 0 and β = 1 the JSD is identically zero, so, as
TRL does, those end-points use fkl and rkl.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from kdbench.api import (
    DEFAULT_TOP_K,
    REPLAY_CAPACITY,
    DistillerParams,
    DistillJob,
    LossFn,
    MixedSampling,
    Observer,
    Register,
    chain,
    distillation_loss,
    hookimpl,
    jsd_from_trl_beta,
    teacher_hook,
)


@dataclass(frozen=True)
class GKDParams(DistillerParams):
    """[Z]: lmbda 0.5, beta 0.1 (DistiLLM's jsd λ 0.9), kd_ratio 1.0, replay capacity 1000. ``top_k``: cached
    teacher log-probs for the ground-truth steps. ``max_new_tokens``: None = up to the task's total length.
    ``lr``/``epochs``: None = the task's student config ([Z]'s 5e-4 is for pretrained students)."""

    lmbda: float = 0.5
    beta: float = 0.1
    capacity: int = REPLAY_CAPACITY
    top_k: int = DEFAULT_TOP_K
    max_new_tokens: int | None = None

    plugin: ClassVar[str] = "gkd"
    probabilities: ClassVar[tuple[str, ...]] = ("lmbda", "beta")
    positives: ClassVar[tuple[str, ...]] = ("capacity", "top_k", "max_new_tokens")


def gkd_loss(job: DistillJob, beta: float, kd_ratio: float) -> LossFn:
    """Generalised JSD(β) in TRL's convention; fkl at β = 0 and rkl at β = 1 (TRL's end-points)."""
    if beta == 0.0:
        return distillation_loss(job, "fkl", kd_ratio)
    if beta == 1.0:
        return distillation_loss(job, "rkl", kd_ratio)
    return distillation_loss(job, "jsd", kd_ratio, lmbda=jsd_from_trl_beta(beta))


class GKD:
    name = "gkd"
    description = "Generalized KD: JSD on student samples (prob. 0.5, via a replay buffer) or ground truth."
    Params = GKDParams

    def __init__(self, params: GKDParams) -> None:
        self.params = params
        self.observers: list[Observer] = []

    def distill(self, job: DistillJob) -> Any:
        p = self.params
        strategy = MixedSampling(job, p.lmbda, p.capacity, p.max_new_tokens, self.observers)
        prepare = chain(strategy, teacher_hook(job, k=p.top_k) if p.lmbda < 1.0 else None)
        job.train(gkd_loss(job, p.beta, p.kd_ratio), job.with_overrides(p.lr, p.epochs), prepare)
        return job.student


@hookimpl
def register_distillers(register: Register) -> None:
    register(GKD)
