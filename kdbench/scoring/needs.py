"""What an attack may declare it needs; the scoring context computes each once and caches it."""

from __future__ import annotations


class Need:
    """What an attack may declare it needs; the runner computes each once per (model, samples) and caches it."""

    TOKEN_STATS = "token_stats"  # per response token: log q(x_t), and μ_t, σ_t² of log q over the vocabulary
    TEXT_VARIANTS = "text_variants"  # the target's token statistics on transformed samples (lowercased, neighbours)
    REFERENCE_MODEL = "reference_model"  # another model's token statistics on the samples
    WHITE_BOX = "white_box"  # the target's weights: gradients, perturbed copies
    TOKEN_FREQUENCIES = "token_frequencies"  # token counts on a reference corpus (the public split)
    NONMEMBER_TEXT = "nonmember_text"  # text no model trained on (the eval split), e.g. ReCaLL's prefixes
    SHADOW_MODELS = "shadow_models"  # models trained on random halves of a population (LiRA)
    # Which samples are members: only for a *reference baseline* (``blind``) that cross-validates on them and never
    # looks at a model. Its AUC measures how the two sets differ, so it is reported beside the attacks (records
    # with ``reference: true``) and never counted as one.
    MEMBERSHIP_LABELS = "membership_labels"


ALL_NEEDS = frozenset(v for k, v in vars(Need).items() if k.isupper())


def is_reference(needs: frozenset[str]) -> bool:
    """Whether an attack with these needs is a reference baseline rather than a membership attack."""
    return Need.MEMBERSHIP_LABELS in needs
