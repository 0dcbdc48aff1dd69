"""``dp-sgd``: the student's distillation with differentially private SGD (Abadi et al. 2016) through Opacus:
per-sample gradient clipping to ``max_grad_norm`` and Gaussian noise, the noise multiplier calibrated so that
the whole training spends at most (``epsilon``, ``delta``); ``delta`` defaults to 1/n, n = the student's
training examples. The ε actually spent (from the accountant, after the steps really taken) is reported with
the results as ``defense_report["dp-sgd"]["epsilon_spent"]``.

Approximations (stated in docs/defenses.md): kdbench's loop draws shuffled fixed-size batches, while the
accountant assumes Poisson sampling at rate batch_size/n (the common practice); the distillation losses average
over the batch's response tokens, so a sample's unclipped gradient is scaled by its share of the batch's tokens
(clipping still bounds every sample's contribution). The privacy unit is one distillation example; the teacher
is not trained privately, so this protects the distillation set, not the teacher's private data it was fine-tuned on.
Needs ``pip install opacus``.
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from kdbench.api import DefenseBase, KdbenchError, ParameterError, Register, hookimpl


@dataclass(frozen=True)
class DPSGDParams:
    """Target ``epsilon`` and ``delta`` (None: 1/n), per-sample clipping norm, Opacus accountant."""

    epsilon: float = 8.0
    delta: float | None = None
    max_grad_norm: float = 1.0
    accountant: Literal["rdp", "prv", "gdp"] = "rdp"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ParameterError(f"dp-sgd: epsilon={self.epsilon!r} must be a positive number.")
        if self.delta is not None and not 0.0 < self.delta < 1.0:
            raise ParameterError(f"dp-sgd: delta={self.delta!r} must lie in (0, 1).")
        if not self.max_grad_norm > 0:
            raise ParameterError(f"dp-sgd: max_grad_norm={self.max_grad_norm!r} must be positive.")


class PerSamplePositions(nn.Module):
    """Passes explicit per-row position ids. Without them GPT-2 adds one (1, T) row of position embeddings to
    the whole batch, Opacus sees a batch of 1 for ``wpe`` and cannot compute its per-sample gradients."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.takes_positions = "position_ids" in inspect.signature(model.forward).parameters

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        if self.takes_positions and "position_ids" not in kwargs:
            mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
            kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


@dataclass
class _Student:
    """One privately trained student: its accountant and what was calibrated."""

    module: Any
    optimizer: Any
    accountant: Any
    noise_multiplier: float
    sample_rate: float
    planned_steps: int
    delta: float


def planned_steps(scheduler: Any) -> int | None:
    """The total steps of the shared loop's cosine schedule (transformers keeps them in the lr lambda)."""
    for function in getattr(scheduler, "lr_lambdas", []):
        steps = getattr(function, "keywords", {}).get("num_training_steps")
        if isinstance(steps, int):
            return steps
    return None


class DPSGD(DefenseBase):
    name = "dp-sgd"
    description = "Opacus DP-SGD for the student: per-sample clipping + noise for a target (ε, δ=1/n)."
    Params = DPSGDParams
    stages: ClassVar[frozenset[str]] = frozenset({"training"})

    def __init__(self, params: DPSGDParams) -> None:
        super().__init__(params)
        self._n, self._index = 0, 0
        self._students: list[_Student] = []
        self._spent: list[float] = []

    def check(self, model_config: Any, distiller: str) -> None:
        try:
            import opacus  # noqa: F401
        except ImportError:
            raise KdbenchError("dp-sgd needs Opacus: pip install opacus") from None

    def start_student(self, index: int, n_examples: int) -> None:
        self._n, self._index = n_examples, index

    def wrap_training(self, model: Any, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]:
        from opacus import GradSampleModule
        from opacus.accountants import create_accountant
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.optimizers import DPOptimizer

        if self.context is None or self._n < 1:
            raise KdbenchError("dp-sgd needs the run's DefenseContext and the student's data size first.")
        if len(self._students) > self._index:
            raise KdbenchError("dp-sgd calibrates its noise for one training loop per student; this distiller "
                               "started a second one, whose privacy cost would not be accounted.")
        p, batch = self.params, self.context.config.batch_size
        sample_rate = min(1.0, batch / self._n)
        steps = planned_steps(scheduler) or math.ceil(self._n / batch) * self.context.config.epochs
        delta = p.delta if p.delta is not None else 1.0 / self._n
        sigma = get_noise_multiplier(target_epsilon=p.epsilon, target_delta=delta, sample_rate=sample_rate,
                                     steps=steps, accountant=p.accountant)
        accountant = create_accountant(p.accountant)
        # Opacus' hooks on the first layers, whose inputs need no gradient: expected, and harmless
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with "
                                "respect to module outputs", category=UserWarning)
        module = GradSampleModule(PerSamplePositions(model))
        private = DPOptimizer(optimizer, noise_multiplier=sigma, max_grad_norm=p.max_grad_norm,
                              expected_batch_size=batch)
        private.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
        self._students.append(_Student(module, private, accountant, sigma, sample_rate, steps, delta))
        return module, private, scheduler

    def finish_student(self, index: int, student: Any) -> None:
        """Read the spent ε, then detach Opacus (hooks, per-sample gradients) from the trained student."""
        if len(self._students) != index + 1:
            raise KdbenchError("dp-sgd: the student was trained without the shared loop's optimizer hook, so no "
                               "privacy engine was applied; this distiller cannot be used with dp-sgd.")
        run = self._students[-1]
        self._spent.append(float(run.accountant.get_epsilon(delta=run.delta)) if run.accountant.history else 0.0)
        run.optimizer.zero_grad(set_to_none=True)
        (getattr(run.module, "cleanup", None) or run.module._close)()

    def report(self) -> dict[str, Any]:
        """Spent ε (the largest over the students: an ensemble's members see disjoint data) and, per student,
        what was calibrated and how many steps the accountant saw."""
        if not self._students:
            return {}
        runs = self._students
        return {
            "epsilon_target": self.params.epsilon,
            "epsilon_spent": max(self._spent) if self._spent else None,
            "delta": max(r.delta for r in runs),
            "max_grad_norm": self.params.max_grad_norm,
            "accountant": self.params.accountant,
            "noise_multiplier": [r.noise_multiplier for r in runs],
            "sample_rate": [r.sample_rate for r in runs],
            "planned_steps": [r.planned_steps for r in runs],
            "steps": [sum(int(h[2]) for h in r.accountant.history) for r in runs],
        }


@hookimpl
def register_defenses(register: Register) -> None:
    register(DPSGD)
