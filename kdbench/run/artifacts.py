"""Evaluation artifacts of a trained model, cached like every stage: its per-token statistics on a set of
samples (one batched pass every attack reads), and its greedy generations (memorization, utility) or
samples (best-of-k PII leakage)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from kdbench.core.data import Example, content_hash
from kdbench.core.types import TrainedModel
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
        spec |= {"sampled": sampled, "seed": ctx.seed}

    def build(tmp: Path) -> None:
        prompts = [e.prompt_ids for e in ctx.encode(samples) for _ in range(max(1, sampled))]
        prompt, total = ctx.lengths  # prompts are within ``prompt``: no continuation runs past ``total``
        out = generate(
            ctx.model(trained), prompts, max_new_tokens=min(max_new_tokens, total - prompt),
            pad_id=ctx.tokenizer.pad_token_id, eos_id=ctx.tokenizer.eos_token_id, device=ctx.device,
            reporter=ctx.reporter, label=f"{'sampling' if sampled else 'generating'} {trained.label}",
            sample_seed=ctx.seed if sampled else None,
        )
        (tmp / "generations.json").write_text(json.dumps(out))

    with ctx.timed("generation"):
        path = ctx.cache.get_or_build("generations", spec, build)
    result: list[list[int]] = json.loads((path / "generations.json").read_text())
    return result
