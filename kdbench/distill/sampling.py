"""Ancestral sampling of responses from a policy: one model, or a mixture of models' next-token distributions.

Why not ``model.generate(do_sample=True)``: it draws from torch's global RNG, so a distiller's samples would
depend on whatever else consumed random numbers before it; here every draw comes from the ``torch.Generator``
the caller passes, so a run is reproducible from its seed. And MiniLLM samples from a *mixture* of student and
teacher distributions, which ``generate`` cannot express. Sampling is pure ancestral sampling (temperature 1,
no top-k, no top-p), as every sampling distiller of [Z]/DistiLLM uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from kdbench.training.decoding import decode

LogitsTransform = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class PolicyPart:
    """One model of a sampling policy: ``softmax(transform(logits))`` enters the mixture with ``weight``.

    ``transform`` is where a teacher's output defenses apply, so samples drawn from a defended teacher (SeqKD,
    MiniLLM's mixture) come from the distribution the student is allowed to see.
    """

    model: Any
    weight: float = 1.0
    transform: LogitsTransform | None = None


@torch.no_grad()
def sample(
    policy: Sequence[PolicyPart],
    prompts: Sequence[Sequence[int]],
    *,
    generator: torch.Generator,
    max_new_tokens: int | Sequence[int],
    eos_id: int,
    pad_id: int,
    device: torch.device,
    batch_size: int = 32,
) -> list[tuple[int, ...]]:
    """One sampled response per prompt: the drawn tokens, ending with EOS when the policy chose to stop, or cut
    at the prompt's ``max_new_tokens`` budget (an int for all, or one per prompt; each at least 1).

    Models are put in eval mode (no dropout) while sampling and restored afterwards. Rows are batched in the
    given order, so the result depends only on the inputs and the generator's state.
    """
    _check_policy(policy)
    budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != len(prompts) or any(b < 1 for b in budgets):
        raise ValueError("sample: need one max_new_tokens >= 1 per prompt")
    modes = [part.model.training for part in policy]
    for part in policy:
        part.model.to(device).eval()
    try:
        out: list[tuple[int, ...]] = []
        for start in range(0, len(prompts), batch_size):
            rows = range(start, min(start + batch_size, len(prompts)))
            out += _sample_batch(
                policy, [prompts[i] for i in rows], [budgets[i] for i in rows], generator, eos_id, pad_id, device
            )
        return out
    finally:
        for part, mode in zip(policy, modes, strict=True):
            part.model.train(mode)


def mixture_log_probs(policy: Sequence[PolicyPart], logits: Sequence[Tensor]) -> Tensor:
    """log Σ_i w_i·softmax(transform_i(logits_i)) over the last dimension, in float32 log space."""
    terms = []
    for part, part_logits in zip(policy, logits, strict=True):
        transformed = part.transform(part_logits.float()) if part.transform else part_logits.float()
        terms.append(torch.log_softmax(transformed.float(), dim=-1) + math.log(part.weight))
    return terms[0] if len(terms) == 1 else torch.logsumexp(torch.stack(terms), dim=0)


def _check_policy(policy: Sequence[PolicyPart]) -> None:
    if not policy or any(not 0.0 < p.weight <= 1.0 for p in policy):
        raise ValueError("sample: a policy needs at least one part, each with a weight in (0, 1]")
    if not math.isclose(sum(p.weight for p in policy), 1.0, abs_tol=1e-6):
        raise ValueError(f"sample: policy weights must sum to 1, got {[p.weight for p in policy]}")


def _sample_batch(
    policy: Sequence[PolicyPart],
    prompts: Sequence[Sequence[int]],
    budgets: Sequence[int],
    generator: torch.Generator,
    eos_id: int,
    pad_id: int,
    device: torch.device,
) -> list[tuple[int, ...]]:
    """One draw per step from the policy's mixture, by :func:`kdbench.training.decoding.decode`."""

    def draw(logits: list[Tensor]) -> Tensor:
        probs = mixture_log_probs(policy, logits).exp()
        return torch.multinomial(probs.to(generator.device), 1, generator=generator).to(device)

    tokens = decode([part.model for part in policy], prompts, budgets, draw, eos_id=eos_id, pad_id=pad_id,
                    device=device)
    return [_cut(row, eos_id, b) for row, b in zip(tokens, budgets, strict=True)]


def _cut(tokens: list[int], eos_id: int, budget: int) -> tuple[int, ...]:
    """The row's tokens up to and including its first EOS, within its budget."""
    tokens = tokens[:budget]
    return tuple(tokens[: tokens.index(eos_id) + 1]) if eos_id in tokens else tuple(tokens)
