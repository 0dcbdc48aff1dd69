"""``neighbourhood``: NLL(x) against the mean NLL of perturbed neighbours of x (Mattern et al. 2023).

Oriented: mean_j NLL(neighbour_j) − NLL(x) — a memorised text sits in a sharp dip its neighbours do not share.
Offline neighbours (no masked LM to download): each word is, with probability ``rate``, swapped with the next
or deleted, by an RNG seeded with ``seed``, the neighbour's index and the text itself (deterministic, order
independent). Only the response (the scored text) is perturbed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdbench.api import (
    AttackInputs,
    Need,
    Register,
    check_range,
    hookimpl,
    mean_logprob,
    scoring_context,
    token_stats_of,
)


@dataclass(frozen=True)
class NeighbourhoodParams:
    n_neighbours: int = 10
    rate: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        check_range("neighbourhood", "n_neighbours", self.n_neighbours, 1)
        check_range("neighbourhood", "rate", self.rate, 0.0, 1.0)


class Neighbourhood:
    name = "neighbourhood"
    description = "Mean NLL of word-swap/deletion neighbours − NLL of the text (offline neighbours)."
    Params = NeighbourhoodParams
    needs = frozenset({Need.TOKEN_STATS, Need.TEXT_VARIANTS})

    def __init__(self, params: NeighbourhoodParams) -> None:
        self.params = params

    def score(self, inputs: AttackInputs) -> np.ndarray:
        p = self.params
        stats = scoring_context(inputs, self.name).neighbour_stats(p.n_neighbours, p.rate, p.seed)
        neighbours = mean_logprob(stats).reshape(len(inputs.samples), p.n_neighbours).mean(axis=1)
        return mean_logprob(token_stats_of(inputs, self.name)) - neighbours


@hookimpl
def register_attacks(register: Register) -> None:
    register(Neighbourhood)
