"""``temperature``: after distillation, multiply by ``factor`` (0.5 in [C] v1) the logits of every token that
occurs in a vulnerable text (see :mod:`kdbench_plugins.defenses._vulnerable_tokens`)."""

from __future__ import annotations

from dataclasses import dataclass

from kdbench_plugins.defenses._vulnerable_tokens import VulnerableTokenDefense, VulnerableTokenParams

from kdbench.api import Register, check_range, hookimpl


@dataclass(frozen=True)
class TemperatureParams(VulnerableTokenParams):
    factor: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("temperature", "factor", self.factor, 0.0)


class Temperature(VulnerableTokenDefense):
    name = "temperature"
    description = "Post-distillation: logits of tokens in teacher-flagged (vulnerable) texts times 0.5 ([C] v1)."
    Params = TemperatureParams
    operation = "scale"

    def value(self) -> float:
        return float(self.params.factor)


@hookimpl
def register_defenses(register: Register) -> None:
    register(Temperature)
