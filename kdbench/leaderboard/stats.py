"""Confidence intervals across replicates (seeds) that count seed-to-seed variance and sampling noise.

Every seed of a cell is scored on the same member/non-member samples (the splits are drawn with the task's seed,
not the run's), so averaging seeds shrinks the training noise but not the sampling noise of that one sample set.
The mean of the seeds' own bootstrap bounds (the old rule) ignores the first; a t-interval over the seed values
alone ignores the second. :func:`seed_interval` adds the two (docs/leaderboard.md, "Aggregation across seeds").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import fmean, stdev

from scipy.stats import t as student_t

LEVEL = 0.95
MIN_SEEDS_FOR_T = 3  # t(0.975, 1) = 12.7: two seeds say too little about seed-to-seed variance for a t-interval


def t_quantile(df: int, level: float = LEVEL) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom."""
    return float(student_t.ppf(0.5 + level / 2, df))


def seed_interval(
    values: Sequence[float],
    cis: Sequence[tuple[float, float] | None],
    bounds: tuple[float, float] = (0.0, 1.0),
) -> tuple[float, float] | None:
    """A 95% interval for the mean over seeds of a statistic, clamped to ``bounds``; None unless every seed
    carries its own (bootstrap) CI, since the sampling noise would otherwise go uncounted.

    - one seed: its own CI;
    - two seeds: the envelope of their CIs — covers both seeds; too few seeds for a t-interval;
    - three or more: mean ± sqrt((t(0.975, n−1)·s/√n)² + h²), s the standard deviation of the seed values and h
      the mean half-width of the seeds' CIs (the sampling noise they share).
    """
    n = len(values)
    if n == 0 or len(cis) != n or any(ci is None for ci in cis):
        return None
    known = [ci for ci in cis if ci is not None]
    if n < MIN_SEEDS_FOR_T:
        low, high = min(ci[0] for ci in known), max(ci[1] for ci in known)
    else:
        mean = fmean(values)
        seed_half = t_quantile(n - 1) * stdev(values) / math.sqrt(n)
        sampling_half = fmean((ci[1] - ci[0]) / 2 for ci in known)
        half = math.hypot(seed_half, sampling_half)
        low, high = mean - half, mean + half
    return max(bounds[0], low), min(bounds[1], high)
