"""``ensemble``: k students, each distilled on its own disjoint shard of the distillation data (a seeded split
into near-equal parts), combined into one model whose next-token distribution is the mean of theirs: logits =
log(mean_i softmax(logits_i)) ([C], METHODS.md §7).

The combined model is an ``nn.Module`` (no HF ``generate``: kdbench's greedy decoding falls back to its
``forward``); it saves its members in ``member-<i>/`` beside a marker, so the cache and
:func:`kdbench.models.hub.load_model` rebuild it. At evaluation, :meth:`Ensemble.assess` also reports [C]'s own
ensembling of the attack: every member is attacked, each member's predictions are thresholded at its
balanced-accuracy threshold (each class ≥ ``min_class_fraction``, [C]'s 20%), and a sample is called a member
when a strict majority of the k members call it one (ties count as non-member). The vote's TPR, FPR and
balanced accuracy go to the cell's ``defense_report``.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from transformers.utils import ModelOutput

from kdbench.api import (
    DefenseBase,
    Example,
    KdbenchError,
    ParameterError,
    Register,
    best_balanced_accuracy,
    cache_keyword,
    check_range,
    hookimpl,
    inside,
    load_model,
    write_marker,
)


@dataclass(frozen=True)
class EnsembleParams:
    """``k`` students; ``min_class_fraction``: the guard of each member's threshold in the majority vote."""

    k: int = 3
    min_class_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.k < 2:
            raise ParameterError(f"ensemble: k={self.k!r} must be at least 2.")
        check_range("ensemble", "min_class_fraction", self.min_class_fraction, 0.0, 0.5)


@dataclass
class EnsembleOutput(ModelOutput):
    """The ensemble's logits and, when asked for, its members' KV caches (under ``cache``, as transformers 5)."""

    logits: torch.Tensor | None = None
    cache: tuple[Any, ...] | None = None


class EnsembleLM(nn.Module):
    """Members' next-token distributions averaged: ``logits`` are log(mean softmax), already normalised."""

    def __init__(self, members: Sequence[Any]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    @property
    def config(self) -> Any:
        return self.members[0].config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: Sequence[Any] | None = None, use_cache: bool = False, **kwargs: Any) -> Any:
        """``cache``: the members' KV caches, one each, as the previous call returned them (decoding token by
        token then costs one step per member instead of rereading the sequence)."""
        caches = list(cache) if cache is not None else [None] * len(self.members)
        logps, returned = [], []
        for member, member_cache in zip(self.members, caches, strict=True):
            keyword = cache_keyword(member)
            extra = {"use_cache": True, keyword: member_cache} if use_cache else {}
            output = member(input_ids=input_ids, attention_mask=attention_mask, **kwargs, **extra)
            logps.append(torch.log_softmax(output.logits.float(), -1))
            returned.append(output.get(keyword) if use_cache else None)
        logits = torch.logsumexp(torch.stack(logps), dim=0) - math.log(len(logps))
        members_cached = use_cache and all(c is not None for c in returned)
        return EnsembleOutput(logits=logits, cache=tuple(returned) if members_cached else None)

    def save_pretrained(self, directory: str | Path, **kwargs: Any) -> None:
        directory = Path(directory)
        names = [f"member-{i}" for i in range(len(self.members))]
        members: list[Any] = list(self.members)
        for name, member in zip(names, members, strict=True):
            member.save_pretrained(directory / name, **kwargs)
        write_marker(directory, Ensemble.name, members=names)


def majority_vote(scores: Sequence[np.ndarray], n_members: int, min_class_fraction: float) -> dict[str, Any]:
    """[C]'s ensembling of an attack: each model's scores thresholded at its own balanced-accuracy threshold,
    then a strict-majority vote; TPR / FPR / balanced accuracy of the vote and of each model alone."""
    votes, alone = np.zeros(len(scores[0]), dtype=int), []
    for s in scores:
        accuracy, threshold = best_balanced_accuracy(s[:n_members], s[n_members:], min_class_fraction)
        votes += s >= threshold
        alone.append(accuracy)
    called = votes * 2 > len(scores)
    tpr, fpr = float(called[:n_members].mean()), float(called[n_members:].mean())
    return {"tpr": tpr, "fpr": fpr, "balanced_accuracy": (tpr + 1.0 - fpr) / 2.0, "member_balanced_accuracy": alone}


class Ensemble(DefenseBase):
    name = "ensemble"
    description = "k students on disjoint shards, output distributions averaged; [C]'s majority vote reported."
    Params = EnsembleParams
    stages: ClassVar[frozenset[str]] = frozenset({"postprocess"})

    def __init__(self, params: EnsembleParams) -> None:
        super().__init__(params)
        self._sizes: list[int] = []

    def shards(self, examples: list[Example]) -> list[list[Example]]:
        k = self.params.k
        if len(examples) < k:
            raise KdbenchError(f"ensemble: {len(examples)} distillation examples cannot make {k} non-empty shards.")
        order = list(range(len(examples)))
        random.Random(f"{self.context.seed if self.context else 0}:ensemble:{k}").shuffle(order)
        shards = [[examples[i] for i in sorted(order[j::k])] for j in range(k)]
        self._sizes = [len(s) for s in shards]
        return shards

    def postprocess(self, students: Sequence[Any]) -> Any:
        return EnsembleLM(students)

    def report(self) -> dict[str, Any]:
        return {"k": self.params.k, "shard_sizes": self._sizes}

    def assess(self, student: Any, score: Callable[[Any], dict[str, np.ndarray]], n_members: int) -> dict[str, Any]:
        names = [f"member-{i}" for i in range(self.params.k)]
        if not all((student.path / name).is_dir() for name in names):
            return {}
        per_member = [
            score(dataclasses.replace(student, label=f"{student.label} {name}", key=f"{student.key}/{name}",
                                      path=student.path / name))
            for name in names
        ]
        common = [attack for attack in per_member[0] if all(attack in m for m in per_member)]  # a failed one: none
        return {"vote": {attack: majority_vote([m[attack] for m in per_member], n_members,
                                               self.params.min_class_fraction)
                         for attack in common}}

    @classmethod
    def load_processed(cls, directory: Path, marker: dict[str, Any], trust_remote_code: bool = False) -> Any:
        return EnsembleLM([load_model(inside(directory, name, "the marker's 'members'"),
                                      trust_remote_code=trust_remote_code)
                           for name in marker.get("members") or [None]])


@hookimpl
def register_defenses(register: Register) -> None:
    register(Ensemble)
