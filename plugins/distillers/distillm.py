"""``distillm``: DistiLLM (Ko et al., ICML 2024): a skew KL divergence on DistiLLM's adaptive mix of ground
truth, fresh student samples and replayed student samples (METHODS.md §3; the schedule is
:class:`kdbench.distill.strategies.AdaptiveSGO`). [Z] uses srkl (α 0.1) for most students and sfkl for the smallest.

Validation: DistiLLM moves its threshold on a dev split's loss; kdbench's distillation set has none, so
``val_fraction`` (5%) of it is held out, chosen with the run's seed, and the student trains on the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

from kdbench.api import (
    DEFAULT_TOP_K,
    REPLAY_CAPACITY,
    AdaptiveSGO,
    DistillerParams,
    DistillJob,
    Observer,
    ParameterError,
    Register,
    SGOState,
    chain,
    distillation_loss,
    hookimpl,
    split_off,
    teacher_hook,
)


@dataclass(frozen=True)
class DistiLLMParams(DistillerParams):
    """DistiLLM's defaults: srkl with α 0.1, kd_ratio 1.0, threshold from 0 in steps of 0.1 on validation-loss
    rises of 0.1, replay capacity 1000. ``val_fraction``: the held-out share of the distillation data.
    ``max_new_tokens``: None = up to the task's total length. ``lr``/``epochs``: None = the task's student
    config ([Z]'s 1e-4 is for pretrained students)."""

    objective: Literal["srkl", "sfkl"] = "srkl"
    alpha: float = 0.1
    init_threshold: float = 0.0
    threshold_step: float = 0.1
    loss_eps: float = 0.1
    capacity: int = REPLAY_CAPACITY
    val_fraction: float = 0.05
    top_k: int = DEFAULT_TOP_K
    max_new_tokens: int | None = None

    plugin: ClassVar[str] = "distillm"
    objectives: ClassVar[tuple[str, ...]] = ("srkl", "sfkl")
    probabilities: ClassVar[tuple[str, ...]] = ("alpha", "init_threshold", "threshold_step")
    positives: ClassVar[tuple[str, ...]] = ("loss_eps", "capacity", "top_k", "max_new_tokens")

    def check(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ParameterError(f"distillm: val_fraction={self.val_fraction!r} must lie in (0, 1).")


class DistiLLM:
    name = "distillm"
    description = "DistiLLM: skew reverse KL on an adaptive mix of ground truth and student samples."
    Params = DistiLLMParams

    def __init__(self, params: DistiLLMParams) -> None:
        self.params = params
        self.observers: list[Observer] = []
        self.schedule: SGOState | None = None  # the threshold's history after distill()

    def distill(self, job: DistillJob) -> Any:
        p = self.params
        config = job.with_overrides(p.lr, p.epochs)
        train, validation = split_off(job.data, p.val_fraction, job.generator("distillm-validation"))
        job = replace(job, data=train)
        steps_per_epoch = math.ceil(len(train) / config.batch_size)
        strategy = AdaptiveSGO(
            job, validation, steps_per_epoch * config.epochs, steps_per_epoch,
            init_threshold=p.init_threshold, step_size=p.threshold_step, loss_eps=p.loss_eps,
            capacity=p.capacity, max_new_tokens=p.max_new_tokens, observers=self.observers,
        )
        self.schedule = strategy.state
        loss = distillation_loss(job, p.objective, p.kd_ratio, alpha=p.alpha)
        job.train(loss, config, chain(strategy, teacher_hook(job, k=p.top_k)))
        return job.student


@hookimpl
def register_distillers(register: Register) -> None:
    register(DistiLLM)
