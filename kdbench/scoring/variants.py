"""Transformed copies of a sample an attack compares against (neighbours)."""

from __future__ import annotations

import hashlib
import random


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
