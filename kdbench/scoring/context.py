"""One pass, many attacks: every statistic an attack needs, computed once per (model, samples, variant).

An attack reads ``inputs.scoring``, a :class:`ScoringContext` for one target model and one set of samples. Each
of its methods computes one need lazily, stores it in the content-addressed ArtifactCache (keyed by the model's
key, a hash of the exact token ids scored, and the variant with its parameters) and memoises it for the
evaluation, so ten attacks that share a need pay for it once, and adding an attack to a finished grid computes
only what that attack adds. Where models, encodings and data come from is the :class:`ScoringHost`'s business:
:class:`RunHost` for ``kdbench run`` (built on RunContext), ``kdbench.analysis.audit.AuditHost`` for ``kdbench audit``.

The context is put together here from parts with one job each: :mod:`kdbench.scoring.base` (the target, the
samples, the memo, their encodings and token statistics), :mod:`kdbench.scoring.variants` (text variants),
:mod:`kdbench.scoring.references` (reference and shadow models, token frequencies) and
:mod:`kdbench.scoring.white_box` (gradients, perturbed weights, greedy predictions). The host, the shadow recipe and
the cached passes they all use live in :mod:`kdbench.scoring.host`; this module re-exports the names callers import
from it.
"""

from __future__ import annotations

from kdbench.scoring.host import ScoringHost, ShadowRecipe, external_model
from kdbench.scoring.references import References
from kdbench.scoring.variants import TextVariants
from kdbench.scoring.white_box import WhiteBox

__all__ = ["ScoringContext", "ScoringHost", "ShadowRecipe", "external_model"]


class ScoringContext(TextVariants, References, WhiteBox):
    """Every need of every attack for one target model and one list of samples, each computed once."""
