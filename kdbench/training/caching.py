"""The KV cache's keyword, for code that decodes token by token from a model's ``forward`` (the distillers'
sampler, greedy decoding of models without HF ``generate``, a defense's ensemble passing its members' caches)."""

from __future__ import annotations

import inspect
from typing import Any


def cache_keyword(model: Any) -> str:
    """The KV cache's name in ``model``'s forward and outputs: ``cache`` from transformers 5.x (which deprecates
    ``past_key_values`` and warns on every call), ``past_key_values`` before."""
    forward = getattr(model, "forward", None)
    try:
        parameters = inspect.signature(forward).parameters if forward is not None else {}
    except (TypeError, ValueError):
        parameters = {}
    return "cache" if "cache" in parameters else "past_key_values"
