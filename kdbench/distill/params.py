"""Distillers' parameters: a base dataclass with the fields and checks the KD-family distillers share, and the
checks themselves (each raises :class:`~kdbench.core.errors.ParameterError` naming the plugin and the key)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Literal

from kdbench.core.errors import ParameterError, unknown_name_message
from kdbench.training.objectives import OBJECTIVES

ObjectiveName = Literal["fkl", "rkl", "jsd", "tvd", "sfkl", "srkl"]
"""The objectives of :mod:`kdbench.training.objectives`, as a Params field type (the CLI checks the choice)."""


@dataclass(frozen=True)
class DistillerParams:
    """What every KD-family distiller takes: the weight of the KD term against cross-entropy on the gold response
    (``kd_ratio``; [Z] uses 1.0), optional ``lr``/``epochs`` overrides (None = the task's student training
    config), and ``lm_coef``, the weight of [Z]'s language-modelling term on pre-training text (0 = none;
    :meth:`kdbench.distill.job.DistillJob.with_lm_term`). A subclass adds its own fields and names, in class
    variables, which of them are probabilities (checked in [0, 1]) and which are positive counts or sizes; an
    ``objective`` field is checked against ``objectives``. ``check`` holds any other validation."""

    kd_ratio: float = 1.0
    lr: float | None = None
    epochs: int | None = None
    lm_coef: float = 0.0  # [Z]'s language-modelling term on pre-training text (1 for ImitKD/DistiLLM/MiniLLM on GPT-2)

    plugin: ClassVar[str] = "distiller"
    probabilities: ClassVar[tuple[str, ...]] = ()
    positives: ClassVar[tuple[str, ...]] = ()
    objectives: ClassVar[tuple[str, ...]] = tuple(OBJECTIVES)

    def __post_init__(self) -> None:
        objective = getattr(self, "objective", None)
        if objective is not None:
            check_objective(self.plugin, objective, self.objectives)
        for name in ("kd_ratio", *self.probabilities):
            check_probability(self.plugin, name, getattr(self, name))
        for name in self.positives:
            check_positive(self.plugin, name, getattr(self, name))
        self.check()
        check_overrides(self.plugin, self.lr, self.epochs)
        check_lm_coef(self.plugin, self.lm_coef)

    def check(self) -> None:
        """Checks beyond ranges (override in a subclass)."""


def check_overrides(owner: str, lr: float | None, epochs: int | None = None) -> None:
    """The optional lr/epochs overrides every distiller takes: lr > 0 (finite), epochs >= 1."""
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise ParameterError(f"{owner}: lr={lr!r} must be a positive number (or none for the task's).")
    if epochs is not None and epochs < 1:
        raise ParameterError(f"{owner}: epochs={epochs!r} must be at least 1 (or none for the task's).")


def check_lm_coef(owner: str, value: float) -> None:
    """The language-modelling term's weight: finite and >= 0."""
    if not (math.isfinite(value) and value >= 0):
        raise ParameterError(f"{owner}: lm_coef={value!r} must be a number >= 0 (0 = no language-modelling term).")


def check_probability(owner: str, name: str, value: float) -> None:
    """A probability or mixture weight in [0, 1] (NaN fails too)."""
    if not 0.0 <= value <= 1.0:
        raise ParameterError(f"{owner}: {name}={value!r} must lie in [0, 1].")


def check_positive(owner: str, name: str, value: float | None) -> None:
    """A count or size that must be > 0 when given."""
    if value is not None and not value > 0:
        raise ParameterError(f"{owner}: {name}={value!r} must be positive.")


def check_objective(owner: str, name: str, allowed: Iterable[str] = OBJECTIVES) -> None:
    allowed = list(allowed)
    if name not in allowed:
        raise ParameterError(f"{owner}: " + unknown_name_message("objective", name, allowed))
