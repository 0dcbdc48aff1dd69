"""Evaluation artifacts of a trained model, cached like every stage: its per-token statistics on a set of
samples (one batched pass every attack reads), and its greedy generations (memorization, utility) or
samples (best-of-k PII leakage)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from kdbench.core.data import Example, content_hash
from kdbench.core.types import TrainedModel
from kdbench.distill.sampling import PolicyPart, sample
from kdbench.run.context import STAGE_VERSION, RunContext
from kdbench.scoring.tokenstats import TokenStats, compute_token_stats
from kdbench.training.loop import generate


def token_stats(ctx: RunContext, trained: TrainedModel, samples: Sequence[Example]) -> TokenStats:
    spec = {
        "stage": "token_stats",
        "version": STAGE_VERSION["token_stats"],
        "model": trained.key,
        "samples": content_hash(samples),
        "template": asdict(ctx.task.template),
        "lengths": [ctx.task.models.max_prompt_tokens, ctx.task.models.max_total_tokens],
    }

    def build(tmp: Path) -> None:
        stats = compute_token_stats(
            ctx.model(trained), ctx.encode(samples), pad_id=ctx.tokenizer.pad_token_id, device=ctx.device,
            reporter=ctx.reporter, label=f"scoring {trained.label}",
        )
        stats.save(tmp / "stats.npz")

    with ctx.timed("token statistics"):
        path = ctx.cache.get_or_build("token_stats", spec, build)
    return TokenStats.load(path / "stats.npz")

def generations(
    ctx: RunContext, trained: TrainedModel, samples: Sequence[Example], max_new_tokens: int, sampled: int = 0
) -> list[list[int]]:
    """Greedy continuations of the samples' prompts; with ``sampled`` = k > 0, k temperature-1 samples per prompt
    instead (prompt i's are rows i·k … i·k + k − 1), drawn with the run's seed."""
    spec = {
        "stage": "generations",
        "version": STAGE_VERSION["generations"],
        "model": trained.key,
        "samples": content_hash(samples),
        "template": asdict(ctx.task.template),
        "max_prompt": ctx.task.models.max_prompt_tokens,
        "max_new_tokens": max_new_tokens,
    }
    if sampled:
        spec |= {"sampled": sampled, "seed": ctx.seed, "sampler": "distill.sampling"}

    def build(tmp: Path) -> None:
        prompts = [e.prompt_ids for e in ctx.encode(samples) for _ in range(max(1, sampled))]
        prompt, total = ctx.lengths  # prompts are within ``prompt``: no continuation runs past ``total``
        pad_id, eos_id = ctx.tokenizer.pad_token_id, ctx.tokenizer.eos_token_id
        budget = min(max_new_tokens, total - prompt)
        if sampled:  # the distillers' ancestral sampler: its own generator, so the draws follow from the seed alone
            drawn = sample([PolicyPart(ctx.model(trained))], prompts, generator=torch.Generator().manual_seed(ctx.seed),
                           max_new_tokens=budget, eos_id=eos_id, pad_id=pad_id, device=ctx.device)
            out = [[t for t in row if t != eos_id] for row in drawn]
        else:
            out = generate(ctx.model(trained), prompts, max_new_tokens=budget, pad_id=pad_id, eos_id=eos_id,
                           device=ctx.device, reporter=ctx.reporter, label=f"generating {trained.label}")
        (tmp / "generations.json").write_text(json.dumps(out))

    with ctx.timed("generation"):
        path = ctx.cache.get_or_build("generations", spec, build)
    result: list[list[int]] = json.loads((path / "generations.json").read_text())
    return result
