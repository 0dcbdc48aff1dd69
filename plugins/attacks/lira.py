"""``lira``: the likelihood-ratio attack with shadow models (Carlini et al. 2022).

Shadow models of the target's kind are trained on random halves of a population — the attack samples
themselves (members ∪ non-members), in complementary pairs so each sample is IN exactly half the shadows. The
per-sample statistic φ is the mean response-token log-probability. Online (default): score = log N(φ; μ_in,
σ_in²) − log N(φ; μ_out, σ_out²); offline: (φ − μ_out) / σ_out. With few shadows the variances are pooled
over samples (``fixed_variance``, LiRA's own advice below ~64 shadows). Shadows are cached like any model.
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

SIGMA_FLOOR = 1e-6


@dataclass(frozen=True)
class LiRAParams:
    n_shadow: int = 4
    online: bool = True
    fixed_variance: bool = True
    seed: int = 0
    base: str | None = None  # shadow base; None: the target's base (kdbench audit: --base)
    lr: float | None = None  # None: the host's recipe for the target
    epochs: int | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.n_shadow < 4 or self.n_shadow % 2:
            raise ParameterError(f"lira: n_shadow={self.n_shadow} must be even and at least 4 (two IN and two "
                                 "OUT shadows per sample, to estimate a variance).")
        for name in ("lr", "epochs", "batch_size"):
            value = getattr(self, name)
            if value is not None:
                check_range("lira", name, value, 1e-12)


def _gaussian_stats(values: np.ndarray, mask: np.ndarray, fixed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample mean and standard deviation of ``values`` (shadows × samples) where ``mask`` holds."""
    count = mask.sum(axis=0)
    mean = np.where(mask, values, 0.0).sum(axis=0) / count
    squares = np.where(mask, (values - mean) ** 2, 0.0)
    if fixed:
        std = np.full(values.shape[1], np.sqrt(squares.sum() / (count - 1).sum()))
    else:
        std = np.sqrt(squares.sum(axis=0) / (count - 1))
    return mean, np.maximum(std, SIGMA_FLOOR)


def lira_scores(target: np.ndarray, shadows: np.ndarray, in_mask: np.ndarray, online: bool, fixed: bool) -> np.ndarray:
    """LiRA from the target's statistic (samples) and the shadows' (shadows × samples, IN where ``in_mask``)."""
    mu_out, sd_out = _gaussian_stats(shadows, ~in_mask, fixed)
    if not online:
        return (target - mu_out) / sd_out
    mu_in, sd_in = _gaussian_stats(shadows, in_mask, fixed)
    log_in = -0.5 * ((target - mu_in) / sd_in) ** 2 - np.log(sd_in)
    log_out = -0.5 * ((target - mu_out) / sd_out) ** 2 - np.log(sd_out)
    return log_in - log_out


class LiRA:
    name = "lira"
    description = "LiRA: likelihood ratio against shadow models trained on random halves of the samples."
    Params = LiRAParams
    needs = frozenset({Need.TOKEN_STATS, Need.SHADOW_MODELS})

    def __init__(self, params: LiRAParams) -> None:
        self.params = params

    def score(self, inputs: AttackInputs) -> np.ndarray:
        p = self.params
        recipe = ShadowRecipe(base=p.base, lr=p.lr, epochs=p.epochs, batch_size=p.batch_size)
        in_mask, shadows = scoring_context(inputs, self.name).shadow_logprobs(p.n_shadow, p.seed, recipe)
        target = mean_logprob(token_stats_of(inputs, self.name))
        return lira_scores(target, shadows, in_mask, p.online, p.fixed_variance)


@hookimpl
def register_attacks(register: Register) -> None:
    register(LiRA)
