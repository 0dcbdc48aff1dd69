"""The run's side of scoring: how a :class:`ScoringContext` reaches the run's cache and models."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from kdbench.core.data import Example
from kdbench.core.errors import KdbenchError
from kdbench.core.types import Encoded, TrainedModel
from kdbench.models import hub as models
from kdbench.run import artifacts
from kdbench.run.context import RunContext
from kdbench.scoring.context import ScoringContext, ScoringHost, ShadowRecipe, external_model
from kdbench.scoring.inputs import AttackInputs
from kdbench.scoring.needs import Need
from kdbench.scoring.tokenstats import TokenStats


class RunHost(ScoringHost):
    """Scoring inside ``kdbench run``: the run's models, tokenizer, template and splits, through RunContext."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx, self.cache, self.device, self.reporter = ctx, ctx.cache, ctx.device, ctx.reporter

    @property
    def tokenizer(self) -> Any:
        return self.ctx.tokenizer

    def encode(self, examples: Sequence[Example], tokenizer: Any = None) -> list[Encoded]:
        return self.ctx.encode(examples, tokenizer)

    def full_text(self, example: Example) -> str:
        return self.ctx.task.template.prompt(example) + example.response

    def load(self, trained: TrainedModel) -> Any:
        return self.ctx.model(trained)

    def timed(self, stage: str) -> AbstractContextManager[None]:
        return self.ctx.timed(stage)

    def token_stats(self, trained: TrainedModel, samples: Sequence[Example]) -> TokenStats:
        return artifacts.token_stats(self.ctx, trained, samples)  # the run's own stage, shared

    def reference(self, name: str, target: TrainedModel) -> TrainedModel:
        """``auto``: the target's pretrained base, or for built-in presets (whose base is a random init, which
        says nothing) ``public``: the target's architecture fine-tuned on the public split with the baseline's
        recipe — for students that is exactly the no-KD baseline. ``baseline``: the task's no-KD baseline."""
        if name == "auto":
            name = "public" if models.is_preset(target.ref) else "base"
        if name == "base":
            if models.is_preset(target.ref):
                raise KdbenchError(
                    f"The base of {target.label} is the built-in preset {target.ref}, a random initialisation: "
                    "useless as a reference. Use ref:model=public, ref:model=baseline or a model path."
                )
            return external_model(target.ref, "reference")
        if name == "public":
            config = self.ctx.training("baseline")
            return self.ctx.fine_tune("baseline", target.ref, self.ctx.splits.roles["public"], config,
                                      label=f"reference for {target.label} (public split)")
        if name == "baseline":
            return self.ctx.baseline()
        return external_model(name, "reference")

    def shadow(self, target: TrainedModel, data: Sequence[Example], recipe: ShadowRecipe, label: str) -> TrainedModel:
        """The target's base fine-tuned on ``data`` with the teacher's recipe (teacher target) or the
        baseline's (any other): a directly trained stand-in, even for distilled students."""
        config = recipe.apply(self.ctx.training("teacher" if target.role == "teacher" else "baseline"))
        return self.ctx.fine_tune("shadow", recipe.base or target.ref, data, config, label=label)

    def corpus(self, need: str) -> Sequence[Example] | None:
        role = {Need.TOKEN_FREQUENCIES: "public", Need.NONMEMBER_TEXT: "eval"}.get(need)
        return self.ctx.splits.roles[role] if role else None


def attack_scorer(host: Any, trained: Any) -> Callable[[Any, Sequence[Example]], np.ndarray]:
    """A ``DefenseContext.teacher_scores``: an attack instance's scores of any examples against ``trained``,
    through ``host``'s (a :class:`kdbench.scoring.context.ScoringHost`) cached token statistics."""
    def scores(attack: Any, examples: Sequence[Example]) -> np.ndarray:
        scoring = ScoringContext(host, trained, examples)
        stats = scoring.token_stats() if Need.TOKEN_STATS in attack.needs else None
        return np.asarray(attack.score(AttackInputs(samples=examples, token_stats=stats, scoring=scoring)), dtype=float)

    return scores
