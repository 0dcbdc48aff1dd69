"""What an attack reads (:class:`AttackInputs`), the Protocol it satisfies, and the two accessors attacks use to
reach the target's token statistics and scoring context with a clear error when run outside kdbench."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from kdbench.core.data import Example
from kdbench.core.errors import KdbenchError
from kdbench.core.plugin import Plugin
from kdbench.scoring.context import ScoringContext
from kdbench.scoring.tokenstats import TokenStats


@dataclass(frozen=True)
class AttackInputs:
    """Everything an attack may read about one target model and one set of samples (members + non-members;
    an attack never sees which is which, except a reference baseline that declares ``Need.MEMBERSHIP_LABELS``)."""

    samples: Sequence[Example]
    token_stats: TokenStats | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    # Lazily computes, and caches per (model, samples, variant), every other need (see kdbench.scoring.context).
    scoring: ScoringContext | None = None
    # True for members, one per sample: given only to attacks declaring Need.MEMBERSHIP_LABELS.
    membership: np.ndarray | None = None


@runtime_checkable
class Attack(Plugin, Protocol):
    """A membership-inference attack. ``score`` returns one float per sample, **higher = more likely member**."""

    needs: ClassVar[frozenset[str]]

    def __init__(self, params: Any) -> None: ...

    def score(self, inputs: AttackInputs) -> np.ndarray: ...


def scoring_context(inputs: AttackInputs, attack: str) -> ScoringContext:
    """The scoring context of ``inputs``, or a clear error for an attack run outside kdbench's evaluators."""
    if inputs.scoring is None:
        raise KdbenchError(
            f"Attack {attack!r} needs a scoring context (inputs.scoring); run it through kdbench run or kdbench audit."
        )
    return inputs.scoring


def token_stats_of(inputs: AttackInputs, attack: str) -> TokenStats:
    """The target's token statistics from ``inputs`` (computed by the evaluator when the attack declares them)."""
    if inputs.token_stats is not None:
        return inputs.token_stats
    return scoring_context(inputs, attack).token_stats()
