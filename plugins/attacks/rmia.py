"""``rmia``: the robust membership inference attack (Zarifzadeh, Liu, Mittal, Shokri, ICML 2024).

A pairwise likelihood-ratio test of the target θ on x against population samples z that no model trained on:
LR(x, z) = (Pr(x|θ) / Pr(x)) / (Pr(z|θ) / Pr(z)), and score(x) = the fraction of z with LR(x, z) ≥ γ.

- Pr(t|θ) for an LLM is exp(LL): LL the mean response-token log-probability, so Pr is the geometric mean of the
  token probabilities (Privacy Meter does the same for language models). Not the sequence probability (exp of the
  sum): that shrinks exponentially with length, so the ratio of x to z would mostly compare lengths, and the offline
  approximation below mixes Pr with the constant 1 − a, which only means something on a per-token scale in [0, 1].
  LL is also LiRA's statistic, so the two share every pass over the samples.
- Pr(t) = the mean of Pr(t|θ') over reference models θ'. They are LiRA's shadows (same ``n_ref``, ``seed`` and
  recipe: the same cached models), trained on random halves of the attack samples in complementary pairs, so each
  x is IN half of them. Online: the mean over all of them. Offline: only the OUT ones, with the paper's linear
  approximation of the missing IN models, Pr_IN ≈ a·Pr_OUT + (1 − a), hence Pr = ½((1 + a)·Pr_OUT + (1 − a)).
  No reference trained on the population, so Pr(z) is the mean over all references, all OUT for z; offline, it
  takes the same approximation as x (as Privacy Meter does). Online, approximating Pr(z) too would put an untuned
  guess at IN models against x's real ones: with a = 0.3 every x then dominates nearly every z (scores tie at 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdbench.api import (
    AttackInputs,
    Need,
    ParameterError,
    Register,
    ShadowRecipe,
    check_range,
    hookimpl,
    mean_logprob,
    scoring_context,
    token_stats_of,
)


@dataclass(frozen=True)
class RMIAParams:
    n_ref: int = 4  # reference models: lira's n_shadow (4) by default, so the two share them
    n_z: int | None = None  # population samples drawn with seed; None: all of the population text
    gamma: float = 1.0  # γ, as Privacy Meter's RMIA
    a: float = 0.3  # offline approximation of IN models from OUT ones; Privacy Meter's default
    online: bool = True
    seed: int = 0  # the shadows' halves (as lira's seed) and the draw of z
    base: str | None = None  # reference base; None: the target's base (kdbench audit: --base)
    lr: float | None = None  # None: the host's recipe for the target
    epochs: int | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.n_ref < 2 or self.n_ref % 2:
            raise ParameterError(f"rmia: n_ref={self.n_ref} must be even and at least 2 (references come in "
                                 "complementary pairs, so every sample has IN and OUT references).")
        if self.n_z is not None:
            check_range("rmia", "n_z", self.n_z, 1)
        check_range("rmia", "gamma", self.gamma, 1e-12)
        check_range("rmia", "a", self.a, 0.0, 1.0)
        for name in ("lr", "epochs", "batch_size"):
            value = getattr(self, name)
            if value is not None:
                check_range("rmia", name, value, 1e-12)


def reference_probability(probs: np.ndarray, known: np.ndarray, approximate: bool, a: float) -> np.ndarray:
    """Pr(t) per sample from the references' Pr(t|θ') (references × samples) where ``known`` holds: their mean,
    or, when only OUT references are known (``approximate``), ½((1 + a)·mean + (1 − a))."""
    mean = np.where(known, probs, 0.0).sum(axis=0) / known.sum(axis=0)
    return 0.5 * ((1.0 + a) * mean + (1.0 - a)) if approximate else mean


def rmia_scores(
    target_x: np.ndarray, refs_x: np.ndarray, in_mask: np.ndarray, target_z: np.ndarray, refs_z: np.ndarray,
    *, online: bool, a: float, gamma: float,
) -> np.ndarray:
    """RMIA from mean log-probabilities: the target's on x (n_x) and z (n_z), the references' on x (refs × n_x,
    IN where ``in_mask``) and on z (refs × n_z, OUT for every reference)."""
    known_x = np.ones_like(in_mask) if online else ~in_mask
    log_ratio_x = target_x - np.log(reference_probability(np.exp(refs_x), known_x, not online, a))
    log_ratio_z = target_z - np.log(reference_probability(np.exp(refs_z), np.ones(refs_z.shape, bool), not online, a))
    # LR(x, z) ≥ γ  ⇔  log ratio_z ≤ log ratio_x − log γ: count those z by binary search, not pairwise.
    dominated = np.searchsorted(np.sort(log_ratio_z), log_ratio_x - np.log(gamma), side="right")
    return dominated / log_ratio_z.size


class RMIA:
    name = "rmia"
    description = "RMIA: pairwise likelihood ratios against population samples, with LiRA's shadows as references."
    Params = RMIAParams
    needs = frozenset({Need.TOKEN_STATS, Need.SHADOW_MODELS, Need.NONMEMBER_TEXT})

    def __init__(self, params: RMIAParams) -> None:
        self.params = params

    def score(self, inputs: AttackInputs) -> np.ndarray:
        p = self.params
        scoring = scoring_context(inputs, self.name)
        recipe = ShadowRecipe(base=p.base, lr=p.lr, epochs=p.epochs, batch_size=p.batch_size)
        in_mask, refs_x = scoring.shadow_logprobs(p.n_ref, p.seed, recipe)
        target_z, refs_z = scoring.population_logprobs(p.n_ref, p.seed, recipe, scoring.population(p.n_z, p.seed))
        target_x = mean_logprob(token_stats_of(inputs, self.name))
        return rmia_scores(target_x, refs_x, in_mask, target_z, refs_z, online=p.online, a=p.a, gamma=p.gamma)


@hookimpl
def register_attacks(register: Register) -> None:
    register(RMIA)
