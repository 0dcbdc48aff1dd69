"""``none``: no defense; the undefended cell every defense is compared against."""

from __future__ import annotations

from kdbench.api import DefenseBase, Register, hookimpl


class NoDefense(DefenseBase):
    name = "none"
    description = "No defense (the reference every defense is compared against)."


@hookimpl
def register_defenses(register: Register) -> None:
    register(NoDefense)
