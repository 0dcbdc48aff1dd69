"""Several defenses applied in order, each at the stages it declares."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from kdbench.core.data import Example
from kdbench.core.errors import KdbenchError
from kdbench.core.params import params_dict
from kdbench.defense.base import DefenseContext, DefenseLifecycle
from kdbench.models.defended import ARCHITECTURE_KEY


def _overrides(defense: Any, method: str) -> bool:
    impl = getattr(type(defense), method, None)
    return impl is not None and impl is not getattr(DefenseLifecycle, method)


class DefenseStack:
    """Several defenses applied in order, each at the stages it declares; refuses stacks that do not compose."""

    def __init__(self, defenses: Sequence[Any]) -> None:
        self.defenses = list(defenses)
        check_composition(self.defenses)

    def _at(self, stage: str) -> list[Any]:
        return [d for d in self.defenses if stage in d.stages]

    def _each(self, method: str, *args: Any) -> None:
        for defense in self.defenses:
            hook = getattr(defense, method, None)
            if hook is not None:
                hook(*args)

    @property
    def is_undefended(self) -> bool:
        """True when no defense of the stack acts at any stage (``none``, or an empty stack): the student is
        then the undefended reference every defense is compared against."""
        return is_undefended(self.defenses)

    @property
    def uses_attack_samples(self) -> bool:
        return any(getattr(d, "uses_attack_samples", False) for d in self.defenses)

    @property
    def checks(self) -> bool:
        """Whether any defense validates the student's config (so the caller need not read it otherwise)."""
        return any(_overrides(d, "check") for d in self.defenses)

    # --- lifecycle --------------------------------------------------------------------------------------------
    def check(self, model_config: Any, distiller: str) -> None:
        self._each("check", model_config, distiller)

    def prepare(self, context: DefenseContext) -> None:
        self._each("prepare", context)

    def shards(self, examples: list[Example]) -> list[list[Example]]:
        for defense in self.defenses:
            if _overrides(defense, "shards"):
                return defense.shards(examples)
        return [examples]

    def start_student(self, index: int, n_examples: int) -> None:
        self._each("start_student", index, n_examples)

    def finish_student(self, index: int, student: Any) -> None:
        self._each("finish_student", index, student)

    def report(self) -> dict[str, Any]:
        reports = {d.name: d.report() for d in self.defenses if hasattr(d, "report")}
        return {name: r for name, r in reports.items() if r}

    def assess(self, student: Any, score: Callable[[Any], dict[str, np.ndarray]], n_members: int) -> dict[str, Any]:
        found = {d.name: d.assess(student, score, n_members) for d in self.defenses if hasattr(d, "assess")}
        return {name: r for name, r in found.items() if r}

    # --- stages -----------------------------------------------------------------------------------------------
    def select_data(self, examples: Sequence[Example]) -> list[Example]:
        out = list(examples)
        for defense in self._at("data"):
            out = defense.select_data(out)
        if not out:
            raise KdbenchError("The data defenses left no distillation examples.")
        return out

    def transform_teacher_logits(self, logits: torch.Tensor) -> torch.Tensor:
        for defense in self._at("teacher_outputs"):
            logits = defense.transform_teacher_logits(logits)
        return logits

    def modify_student(self, model: Any) -> Any:
        """Each architecture defense in turn; each is recorded in the model's config so a load re-applies it."""
        for defense in self._at("student_architecture"):
            model = defense.modify_student(model)
            config = getattr(model, "config", None)
            if config is not None:
                entry = {"name": defense.name, "params": params_dict(defense.params)}
                setattr(config, ARCHITECTURE_KEY, [*(getattr(config, ARCHITECTURE_KEY, None) or []), entry])
        return model

    @property
    def wraps_training(self) -> bool:
        return bool(self._at("training"))

    def wrap_training(self, model: Any, optimizer: Any, scheduler: Any) -> tuple[Any, Any, Any]:
        for defense in self._at("training"):
            model, optimizer, scheduler = defense.wrap_training(model, optimizer, scheduler)
        return model, optimizer, scheduler

    def postprocess(self, students: Sequence[Any]) -> Any:
        stages = self._at("postprocess")
        if stages:
            return stages[0].postprocess(students)
        if len(students) != 1:
            raise KdbenchError(f"{len(students)} students were trained but no defense combines them at postprocess.")
        return students[0]


def is_undefended(defenses: Sequence[Any]) -> bool:
    """Whether ``defenses`` (instances) leave the student undefended: none of them acts at any stage."""
    return not any(d.stages for d in defenses)


def check_composition(defenses: Sequence[Any]) -> None:
    """Refuse stacks whose defenses cannot act together (before any training)."""
    names = [d.name for d in defenses]
    label = "+".join(names)
    for name in dict.fromkeys(names):
        if names.count(name) > 1:
            raise KdbenchError(
                f"Defense stack {label!r}: {name!r} appears twice. A defense composes with others, not with itself "
                "(an ensemble of ensembles, a double bottleneck, ... are not supported)."
            )
    idle = [d.name for d in defenses if not d.stages]
    if idle and len(names) > 1:
        raise KdbenchError(f"Defense stack {label!r}: {idle[0]!r} acts at no stage (it means no defense); drop it "
                           "from the stack.")
    final = [d.name for d in defenses if "postprocess" in d.stages]
    if len(final) > 1:
        raise KdbenchError(
            f"Defense stack {label!r}: {' and '.join(final)} both post-process the finished student, and only one "
            "can decide the final model. Run them as separate stacks (--defense a,b)."
        )
    for defense in defenses:
        if _overrides(defense, "shards") and "postprocess" not in defense.stages:
            raise KdbenchError(f"Defense {defense.name!r} trains several students but does not combine them at "
                               "postprocess; declare the 'postprocess' stage.")
