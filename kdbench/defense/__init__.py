"""The defense interface (five stages and a lifecycle) and the stack that composes defenses; defended-model persistence
lives in :mod:`kdbench.models.defended`."""

from kdbench.core.deprecation import moved_to_api

# kdbench 0.1's plugin imports from this path keep working, with a warning (see kdbench.core.deprecation).
__getattr__ = moved_to_api(
    __name__,
    [
    "DefenseBase",
    "DefenseContext",
    "STAGES",
    ],
)
