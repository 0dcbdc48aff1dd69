"""The part of the scoring context every other part builds on: one target, one list of samples, one memo.

:class:`ScoringBase` holds what a scoring context is for (a host, a target model and the samples), the memo through
which each need is computed once per evaluation (:meth:`ScoringBase._once`), and the needs the other parts build on:
the samples' encodings, the target's token statistics on them and the loaded target model. The parts that add needs
(``variants``, ``references``, ``white_box``) subclass it, and ``kdbench.scoring.context`` composes them, so none of
them imports the module that puts them together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import numpy as np

from kdbench.core.data import Example
from kdbench.core.errors import KdbenchError
from kdbench.core.types import Encoded, TrainedModel
from kdbench.scoring.host import ScoringHost
from kdbench.scoring.tokenstats import TokenStats, mean_logprob

T = TypeVar("T")


class ScoringBase:
    """One target model and one list of samples on a host, with the memo every need goes through."""

    def __init__(self, host: ScoringHost, target: TrainedModel, samples: Sequence[Example]) -> None:
        self.host, self.target, self.samples = host, target, list(samples)
        self._memo: dict[tuple[Any, ...], Any] = {}

    def _once(self, key: tuple[Any, ...], compute: Callable[[], T]) -> T:
        if key not in self._memo:
            self._memo[key] = compute()
        return cast(T, self._memo[key])

    def _corpus(self, need: str) -> Sequence[Example]:
        corpus = self.host.corpus(need)
        if not corpus:
            raise KdbenchError(f"Nothing provides {need} here ({self.host.missing_hint(need)}).")
        return corpus

    # --- the target on the samples -----------------------------------------------------------------------
    def encoded(self) -> list[Encoded]:
        return self._once(("encoded",), lambda: self.host.encode(self.samples))

    def token_stats(self) -> TokenStats:
        return self._once(("stats",), lambda: self.host.token_stats(self.target, self.samples))

    def mean_logprob(self) -> np.ndarray:
        return self._once(("mean_logprob",), lambda: mean_logprob(self.token_stats()))

    def scored_token_ids(self) -> list[np.ndarray]:
        """The token ids behind each sample's token statistics (the response tokens)."""
        return [np.asarray(e.response_ids, dtype=np.int64) for e in self.encoded()]

    def model(self) -> Any:
        """White-box access: the loaded target model (restore anything you change)."""
        return self.host.load(self.target)
