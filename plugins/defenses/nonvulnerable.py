"""``nonvulnerable``: distil only on the distillation points the teacher's membership attack does not flag
([C], METHODS.md §7). Flagged = the teacher's attack score is at or above that attack's balanced-accuracy
threshold on the run's members vs non-members (each predicted class ≥ ``min_class_fraction`` of the samples,
[C]'s 20% guard). ``extra`` adds back that fraction of the flagged points (0, 0.05, 0.10 in [C]), drawn with
the run's seed. The counts and the threshold are reported with the results."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from kdbench.api import DefenseBase, Example, Register, check_range, flag_vulnerable, hookimpl, resolve_attack


@dataclass(frozen=True)
class NonVulnerableParams:
    """``attack``: the teacher attack that flags points (a spec, e.g. ``loss`` or ``mink:k=0.1``)."""

    attack: str = "loss"
    extra: float = 0.0
    min_class_fraction: float = 0.2

    def __post_init__(self) -> None:
        check_range("nonvulnerable", "extra", self.extra, 0.0, 1.0)
        check_range("nonvulnerable", "min_class_fraction", self.min_class_fraction, 0.0, 0.5)
        resolve_attack(self.attack, "nonvulnerable")


class NonVulnerable(DefenseBase):
    name = "nonvulnerable"
    description = "Distil only on points the teacher's MIA does not flag (+ extra fraction of flagged) ([C])."
    Params = NonVulnerableParams
    stages: ClassVar[frozenset[str]] = frozenset({"data"})
    uses_attack_samples = True

    def __init__(self, params: NonVulnerableParams) -> None:
        super().__init__(params)
        self.attack = resolve_attack(params.attack, self.name)
        self._report: dict[str, Any] = {}

    def select_data(self, examples: Sequence[Example]) -> list[Example]:
        p = self.params
        flags, threshold = flag_vulnerable(self.context, self.attack, examples, p.min_class_fraction, self.name)
        flagged = [i for i, flag in enumerate(flags) if flag]
        seed = self.context.seed if self.context else 0
        back = set(random.Random(f"{seed}:nonvulnerable:{p.extra}").sample(flagged, int(p.extra * len(flagged))))
        kept = [e for i, e in enumerate(examples) if not flags[i] or i in back]
        self._report = {
            "attack": p.attack, "threshold": threshold, "n_distillation": len(examples), "n_flagged": len(flagged),
            "n_added_back": len(back), "n_kept": len(kept),
        }
        return kept

    def report(self) -> dict[str, Any]:
        return self._report


@hookimpl
def register_defenses(register: Register) -> None:
    register(NonVulnerable)
