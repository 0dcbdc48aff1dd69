"""Helpers for defenses that act on a teacher attack's verdicts ([C]'s vulnerable points)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kdbench.core.data import Example
from kdbench.core.errors import KdbenchError, ParameterError
from kdbench.core.params import build_params, parse_specs
from kdbench.core.registry import get_registry
from kdbench.defense.base import DefenseContext
from kdbench.evaluation.metrics import best_balanced_accuracy

# --- helpers for defenses ---------------------------------------------------------------------------------------


def resolve_attack(spec: str, owner: str) -> Any:
    """An attack plugin instance from a spec such as ``loss`` or ``mink:k=0.1`` (a defense parameter)."""
    specs = parse_specs(spec)
    if len(specs) != 1:
        raise ParameterError(f"{owner}: attack={spec!r} must name one attack (e.g. loss or mink:k=0.1).")
    try:
        info = get_registry().get("attacks", specs[0].name)
    except KdbenchError as exc:
        raise ParameterError(f"{owner}: {exc}") from None
    return info.cls(build_params(info.cls.Params, specs[0].raw, owner=f"{owner}'s attack {specs[0].name}"))


def flag_vulnerable(
    context: DefenseContext | None, attack: Any, examples: Sequence[Example], min_class_fraction: float, owner: str
) -> tuple[np.ndarray, float]:
    """[C]'s vulnerable points: ``examples`` whose teacher-attack score is at or above the attack's
    balanced-accuracy threshold on the context's members vs non-members. Returns (flags, threshold)."""
    if context is None:
        raise KdbenchError(f"Defense {owner!r} needs the run's DefenseContext (DefenseStack.prepare) first.")
    if not context.members or not context.nonmembers:
        raise KdbenchError(f"Defense {owner!r} needs members and non-members to set the teacher attack's threshold.")
    reference = np.asarray(context.teacher_scores(attack, [*context.members, *context.nonmembers]), dtype=float)
    n = len(context.members)
    _, threshold = best_balanced_accuracy(reference[:n], reference[n:], min_class_fraction)
    scores = np.asarray(context.teacher_scores(attack, examples), dtype=float)
    return scores >= threshold, threshold
