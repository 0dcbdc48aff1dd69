"""Teacher → student: the :class:`~kdbench.distill.job.DistillJob` a distiller plugin receives, cached teacher outputs,
and the on-policy building blocks distillers compose (sampling, replay and SGO strategies, policy gradient)."""

from kdbench.core.deprecation import moved_to_api

# kdbench 0.1's plugin imports from this path keep working, with a warning (see kdbench.core.deprecation).
__getattr__ = moved_to_api(
    __name__,
    [
    "DistillJob",
    "distillation_loss",
    "check_overrides",
    "check_positive",
    "check_probability",
    "check_objective",
    ],
)
