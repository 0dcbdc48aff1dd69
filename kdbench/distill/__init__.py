"""Teacher → student: the :class:`~kdbench.distill.job.DistillJob` a distiller plugin receives, cached teacher outputs,
and the on-policy building blocks distillers compose (sampling, replay and SGO strategies, policy gradient)."""
