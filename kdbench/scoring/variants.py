"""Text variants: transformed copies of the samples, and the target's token statistics on them.

Some attacks compare a sample's score with the score of the same sample changed a little: lowercased, a few words
swapped or deleted (neighbours), or read after a prefix of text no model trained on (ReCaLL). This module holds
those transformations and :class:`TextVariants`, the part of the scoring context that scores the target on them,
each variant cached under its name and parameters so attacks that share one pay for it once.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import replace

from kdbench.core.data import Example
from kdbench.models import hub as models
from kdbench.scoring.base import ScoringBase
from kdbench.scoring.host import cached_stats
from kdbench.scoring.needs import Need
from kdbench.scoring.tokenstats import TokenStats


def neighbour_text(text: str, rate: float, rng: random.Random) -> str:
    """Offline neighbour: each word is, with probability ``rate``, swapped with the next or deleted (at least
    one edit when the text has two words or more). Whitespace between words becomes single spaces."""
    words = text.split()
    if len(words) < 2:
        return text
    edits = [i for i in range(len(words)) if rng.random() < rate] or [rng.randrange(len(words))]
    for i in sorted(edits, reverse=True):
        if i >= len(words) or len(words) < 2:
            continue
        if rng.random() < 0.5 and i + 1 < len(words):
            words[i], words[i + 1] = words[i + 1], words[i]
        else:
            del words[i]
    return " ".join(words)


def neighbour_rng(text: str, seed: int, index: int) -> random.Random:
    """The RNG of one neighbour: seeded by the text itself, so a sample's neighbours never depend on order."""
    return random.Random(f"{seed}:{index}:{hashlib.sha256(text.encode()).hexdigest()}")


class TextVariants(ScoringBase):
    """The target's token statistics on transformed samples (``Need.TEXT_VARIANTS``, ``Need.NONMEMBER_TEXT``)."""

    def variant_stats(self, variant: str, examples: Sequence[Example]) -> TokenStats:
        """The target's token statistics on transformed samples; ``variant`` names the transformation."""
        return self._once(
            ("variant", variant), lambda: cached_stats(self.host, self.target, self.host.encode(examples), variant)
        )

    def lowercase_stats(self) -> TokenStats:
        lowered = [replace(e, response=e.response.lower()) for e in self.samples]
        return self.variant_stats("lowercase", lowered)

    def neighbour_stats(self, n: int, rate: float, seed: int) -> TokenStats:
        """Statistics of ``n`` neighbours per sample, sample-major (neighbour j of sample i at i·n + j)."""
        neighbours = [
            replace(e, response=neighbour_text(e.response, rate, neighbour_rng(e.response, seed, j)))
            for e in self.samples
            for j in range(n)
        ]
        return self.variant_stats(f"neighbours:n={n},rate={rate},seed={seed}", neighbours)

    def recall_prefix(self, shots: int, seed: int) -> list[int]:
        """ReCaLL's non-member prefix: ``shots`` texts drawn with ``seed`` from text no model trained on."""
        pool = self._corpus(Need.NONMEMBER_TEXT)
        chosen = random.Random(seed).sample(list(pool), min(shots, len(pool)))
        text = "".join(self.host.full_text(e) + "\n\n" for e in chosen)
        ids: list[int] = self.host.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    def prefixed_stats(self, shots: int, seed: int, max_prefix_tokens: int) -> TokenStats:
        """Statistics of the samples after the ReCaLL prefix (joined by the host's ``after_prefix``), the prefix
        cut from its start to fit the model's context."""
        prefix = self.recall_prefix(shots, seed)[-max_prefix_tokens:]
        limit = models.max_positions(self.model())
        encoded = []
        for sample, e in zip(self.samples, self.encoded(), strict=True):
            room = max(0, limit - len(self.host.after_prefix([], sample, e).input_ids))
            kept = prefix[max(0, len(prefix) - room) :] if room else []  # its end, nearest the sample
            encoded.append(self.host.after_prefix(kept, sample, e))
        variant = f"recall:shots={shots},seed={seed},max={max_prefix_tokens}"
        return self._once(
            ("variant", variant), lambda: cached_stats(self.host, self.target, encoded, variant)
        )
