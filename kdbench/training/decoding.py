"""Token-by-token decoding from models' ``forward`` alone: the one loop behind the distillers' ancestral sampler
and the greedy continuations of models without HF ``generate`` (a defense's ensemble or logits wrapper)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor


def cache_keyword(model: Any) -> str:
    """The KV cache's name in ``model``'s forward and outputs: ``cache`` from transformers 5.x (which deprecates
    ``past_key_values`` and warns on every call), ``past_key_values`` before."""
    forward = getattr(model, "forward", None)
    try:
        parameters = inspect.signature(forward).parameters if forward is not None else {}
    except (TypeError, ValueError):
        parameters = {}
    return "cache" if "cache" in parameters else "past_key_values"


def returned_cache(output: Any, keyword: str) -> tuple[Any, str]:
    """The KV cache a forward returned (None: it returns none) and the name to hand it back under. The output's own
    ``cache`` key wins over ``keyword``, the signature's guess: a pass-through wrapper's ``**kwargs`` say nothing
    of the model inside, and handing a transformers 5 model ``past_key_values`` works but warns on every call."""
    if not hasattr(output, "get"):
        return None, keyword
    for name in dict.fromkeys(("cache", keyword)):
        found = output.get(name)
        if found is not None:
            return found, name
    return None, keyword


@torch.no_grad()
def decode(
    models: Sequence[Any],
    prompts: Sequence[Sequence[int]],
    budgets: Sequence[int],
    choose: Callable[[list[Tensor]], Tensor],
    *,
    eos_id: int,
    pad_id: int,
    device: torch.device,
) -> list[list[int]]:
    """Left-padded prompts with explicit positions (as HF ``generate``), then one token per step for every row:
    ``choose`` maps the models' last-position logits to a (rows, 1) token tensor. Each model keeps its own KV cache;
    one whose forward returns none (a defense's wrapper) reads the whole sequence again at every step instead. A
    row is finished at EOS or at its budget; later steps give it ``pad_id``. Returns each row's tokens, as many as
    steps were run."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):  # left padding: every row's next token is in the last column
        ids[row, width - len(prompt) :] = torch.tensor(list(prompt), dtype=torch.long)
        attention[row, width - len(prompt) :] = 1
    ids, attention = ids.to(device), attention.to(device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    caches: list[Any] = [None] * len(models)
    keywords = [cache_keyword(model) for model in models]
    budget = torch.tensor(list(budgets), device=device)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    uncached = [False] * len(models)
    drawn: list[Tensor] = []
    step_ids, all_ids = ids, ids
    for t in range(max(budgets)):
        logits = []
        for i, model in enumerate(models):
            if uncached[i]:
                output = model(input_ids=all_ids, attention_mask=attention,
                               position_ids=(attention.cumsum(-1) - 1).clamp(min=0))
            else:
                # no cache yet: name none (a wrapper without ``cache`` in its signature would pass the deprecated
                # ``past_key_values=None`` on to a transformers 5 model, which warns)
                previous = {keywords[i]: caches[i]} if caches[i] is not None else {}
                output = model(input_ids=step_ids, attention_mask=attention, position_ids=positions, use_cache=True,
                               **previous)
                caches[i], keywords[i] = returned_cache(output, keywords[i])
                uncached[i] = caches[i] is None
            logits.append(output.logits[:, -1])
        token = choose(logits)
        drawn.append(torch.where(done[:, None], pad_id, token))
        done |= (token[:, 0] == eos_id) | (budget <= t + 1)
        if bool(done.all()):
            break
        step_ids, all_ids = token, torch.cat([all_ids, token], dim=1)
        attention = torch.cat([attention, torch.ones_like(token)], dim=1)
        # a finished row stays at its last position (its outputs are ignored), so no row outgrows the model
        positions = positions[:, -1:] + (~done[:, None]).long()
    tokens: list[list[int]] = torch.cat(drawn, dim=1).tolist()
    return tokens
