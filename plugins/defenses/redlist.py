"""``redlist``: after distillation, subtract ``penalty`` (1 in [C] v1) from the logits of every token that occurs
in a vulnerable text (see :mod:`kdbench_plugins.defenses._vulnerable_tokens`)."""

from __future__ import annotations

from dataclasses import dataclass

from kdbench_plugins.defenses._vulnerable_tokens import VulnerableTokenDefense, VulnerableTokenParams

from kdbench.api import Register, check_range, hookimpl


@dataclass(frozen=True)
class RedListParams(VulnerableTokenParams):
    penalty: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("redlist", "penalty", self.penalty, 0.0)


class RedList(VulnerableTokenDefense):
    name = "redlist"
    description = "Post-distillation: logits of tokens in teacher-flagged (vulnerable) texts minus 1 ([C] v1)."
    Params = RedListParams
    operation = "subtract"

    def value(self) -> float:
        return float(self.params.penalty)


@hookimpl
def register_defenses(register: Register) -> None:
    register(RedList)
