"""Needs answered by other models and text than the target: reference models, shadow models, a token corpus.

Reference-based attacks calibrate the target's score against a model that did not see the samples; LiRA and RMIA
share shadow models trained on random halves of the samples, and RMIA also scores them and the target on population
samples no model trained on; frequency-based attacks count tokens in a public corpus. All of
them reach those models and corpora through the host, and :class:`References` is the part of the scoring context
that computes each once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kdbench.core.data import Example
from kdbench.core.errors import KdbenchError
from kdbench.core.types import TrainedModel
from kdbench.models import hub as models
from kdbench.scoring.base import ScoringBase
from kdbench.scoring.host import ShadowRecipe, cached_arrays, cached_stats, encoded_hash
from kdbench.scoring.needs import Need
from kdbench.scoring.tokenstats import mean_logprob


class References(ScoringBase):
    """Reference and shadow models' log-probabilities on the samples, and token counts on a reference corpus."""

    def reference_logprob(self, name: str) -> np.ndarray:
        """Per-sample mean log-probability under a reference model, the samples encoded by its own tokenizer
        (whether it adds a BOS included)."""

        def compute() -> np.ndarray:
            reference = self.host.reference(name, self.target)
            tokenizer = models.load_tokenizer(reference.path)
            encoded = self.host.encode(self.samples, tokenizer=tokenizer)  # as the reference reads them (MIMIR)
            if encoded == self.encoded():  # the same ids (same vocabulary and special tokens): the shared pass
                return mean_logprob(self.host.token_stats(reference, self.samples))
            return mean_logprob(cached_stats(self.host, reference, encoded, "plain", pad_id=tokenizer.pad_token_id))

        return self._once(("reference", name), compute)

    def shadow_models(self, n_shadow: int, seed: int, recipe: ShadowRecipe) -> tuple[np.ndarray, list[TrainedModel]]:
        """(in_mask (n_shadow, n_samples), the shadows): models trained on random halves of the population (the
        samples themselves), in complementary pairs so each sample is in exactly half. LiRA and RMIA share them."""

        def compute() -> tuple[np.ndarray, list[TrainedModel]]:
            n = len(self.samples)
            in_mask = np.zeros((n_shadow, n), dtype=bool)
            for pair in range(n_shadow // 2):
                half = np.random.default_rng([seed, pair]).permutation(n)[: n // 2]
                in_mask[2 * pair, half] = True
                in_mask[2 * pair + 1] = ~in_mask[2 * pair]
            shadows = []
            for s in range(n_shadow):
                data = [e for e, member in zip(self.samples, in_mask[s], strict=True) if member]
                label = f"shadow {s + 1}/{n_shadow} of {self.target.label}"
                shadows.append(self.host.shadow(self.target, data, recipe, label))
            return in_mask, shadows

        return self._once(("shadow_models", n_shadow, seed, recipe), compute)

    def shadow_logprobs(self, n_shadow: int, seed: int, recipe: ShadowRecipe) -> tuple[np.ndarray, np.ndarray]:
        """(in_mask, logprob), both (n_shadow, n_samples): :meth:`shadow_models` and each shadow's per-sample
        mean log-probability."""

        def compute() -> tuple[np.ndarray, np.ndarray]:
            in_mask, shadows = self.shadow_models(n_shadow, seed, recipe)
            return in_mask, np.stack([mean_logprob(self.host.token_stats(s, self.samples)) for s in shadows])

        return self._once(("shadows", n_shadow, seed, recipe), compute)

    def population(self, size: int | None, seed: int) -> list[Example]:
        """``size`` examples (all when None) drawn with ``seed`` from the text no model trained on
        (``Need.NONMEMBER_TEXT``: the eval split in a run, ``--reference-text`` in an audit), in corpus order."""
        corpus = list(self._corpus(Need.NONMEMBER_TEXT))
        if size is None:
            return corpus
        if size > len(corpus):
            raise KdbenchError(f"{size} population samples were asked for, but the non-member text has only "
                               f"{len(corpus)} ({self.host.missing_hint(Need.NONMEMBER_TEXT) or 'ask for fewer'}).")
        keep = np.sort(np.random.default_rng(seed).permutation(len(corpus))[:size])
        return [corpus[i] for i in keep]

    def population_logprobs(
        self, n_shadow: int, seed: int, recipe: ShadowRecipe, population: Sequence[Example]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(target, shadows): per-sample mean log-probability of ``population`` under the target (n_z,) and
        under each of :meth:`shadow_models` (n_shadow, n_z); none of them trained on it."""
        key = ("population", n_shadow, seed, recipe, tuple(e.id for e in population))

        def compute() -> tuple[np.ndarray, np.ndarray]:
            _, shadows = self.shadow_models(n_shadow, seed, recipe)
            target = mean_logprob(self.host.token_stats(self.target, population))
            return target, np.stack([mean_logprob(self.host.token_stats(s, population)) for s in shadows])

        return self._once(key, compute)

    # --- corpora -----------------------------------------------------------------------------------------
    def token_frequencies(self) -> np.ndarray:
        """Token counts over the reference corpus (the public split), as the target's tokenizer encodes it."""
        encoded = self.host.encode(self._corpus(Need.TOKEN_FREQUENCIES))

        def compute() -> dict[str, np.ndarray]:
            ids = np.fromiter((t for e in encoded for t in e.input_ids), dtype=np.int64)
            size = max(len(self.host.tokenizer), int(ids.max(initial=-1)) + 1)
            return {"counts": np.bincount(ids, minlength=size).astype(np.int64)}

        spec = {"stage": "token_frequencies", "data": encoded_hash(encoded)}
        return self._once(("frequencies",),
                          lambda: cached_arrays(self.host, "token_frequencies", spec, compute)["counts"])
