"""Where scoring gets its models, encodings and data, and how one batched pass over them is stored.

:class:`ScoringHost` is the one thing that differs between ``kdbench run`` (``kdbench.run.host.RunHost``) and
``kdbench audit`` (``kdbench.analysis.audit.AuditHost``); every part of the scoring context reads models, encodings
and corpora through it. The cached passes every need is built from live here too, next to the host whose own
:meth:`ScoringHost.token_stats` is one of them: each result is stored in the content-addressed ArtifactCache under
the exact token ids scored (:func:`encoded_hash`), so it is recomputed only when what it depends on changes.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdbench.core.cache import ArtifactCache, spec_key
from kdbench.core.data import Example
from kdbench.core.errors import KdbenchError
from kdbench.core.progress import NullReporter, Reporter
from kdbench.core.types import Encoded, TrainConfig, TrainedModel
from kdbench.models import hub as models
from kdbench.scoring.needs import ALL_NEEDS, Need
from kdbench.scoring.tokenstats import TokenStats, compute_token_stats

# Bump when a computation in kdbench.scoring changes what it produces, so stale artifacts are not reused.
SCORING_VERSION = 1


@dataclass(frozen=True)
class ShadowRecipe:
    """How shadow models are trained; ``None`` fields take the host's default for the target."""

    base: str | None = None  # the base to fine-tune; None: the target's own base
    lr: float | None = None
    epochs: int | None = None
    batch_size: int | None = None

    def apply(self, config: TrainConfig) -> TrainConfig:
        return replace(
            config,
            lr=config.lr if self.lr is None else self.lr,
            epochs=config.epochs if self.epochs is None else self.epochs,
            batch_size=config.batch_size if self.batch_size is None else self.batch_size,
        )


class ScoringHost(ABC):
    """Where scoring gets models, encodings and data. Every encoding has a non-empty prompt, so every
    response token is scored and the token statistics line up with ``Encoded.response_ids``."""

    cache: ArtifactCache
    device: torch.device
    reporter: Reporter = NullReporter()
    batch_size: int = 32

    @property
    @abstractmethod
    def tokenizer(self) -> Any: ...

    @abstractmethod
    def encode(self, examples: Sequence[Example], tokenizer: Any = None) -> list[Encoded]:
        """Token ids as the target reads them (``tokenizer``: another model's, e.g. a reference's)."""

    @abstractmethod
    def full_text(self, example: Example) -> str:
        """Prompt and response as one text (ReCaLL's prefixes)."""

    def after_prefix(self, prefix: Sequence[int], example: Example, encoded: Encoded) -> Encoded:
        """``example`` (encoded as ``encoded``) read after ReCaLL's prefix ``prefix`` (token ids of the prefix
        text, no special tokens), scoring what ``encoded`` scores. A host whose encoding puts text in the prompt
        (a plain text's first token) overrides this so every text token is scored, as MIMIR does."""
        return Encoded(tuple(prefix) + encoded.prompt_ids, encoded.response_ids)

    @abstractmethod
    def load(self, trained: TrainedModel) -> Any:
        """The model, loaded once."""

    @abstractmethod
    def reference(self, name: str, target: TrainedModel) -> TrainedModel:
        """Resolve a reference model name (``auto``, ``base``, ``public``, ``baseline`` or a path / hub name)."""

    @abstractmethod
    def shadow(self, target: TrainedModel, data: Sequence[Example], recipe: ShadowRecipe, label: str) -> TrainedModel:
        """A model of the target's kind fine-tuned on ``data`` (cached)."""

    @abstractmethod
    def corpus(self, need: str) -> Sequence[Example] | None:
        """The text behind ``Need.TOKEN_FREQUENCIES`` or ``Need.NONMEMBER_TEXT``, or None if there is none."""

    def missing_hint(self, need: str) -> str:
        """How a user provides ``need`` when this host lacks it."""
        return ""

    def timed(self, stage: str) -> AbstractContextManager[None]:
        return nullcontext()

    def token_stats(self, trained: TrainedModel, samples: Sequence[Example]) -> TokenStats:
        """The target's token statistics on the samples as they are: the one shared batched pass."""
        return cached_stats(self, trained, self.encode(samples), "plain")

    def check_needs(self, attacks: Sequence[tuple[str, frozenset[str]]]) -> None:
        """Refuse, before any work, attacks whose needs this host cannot provide."""
        problems = []
        for label, needs in attacks:
            for need in sorted(needs):
                if need not in ALL_NEEDS:
                    problems.append(f"attack {label!r} needs {need!r}, which kdbench does not know")
                elif need in (Need.TOKEN_FREQUENCIES, Need.NONMEMBER_TEXT) and not self.corpus(need):
                    problems.append(f"attack {label!r} needs {need} ({self.missing_hint(need)})")
        if problems:
            raise KdbenchError("Cannot run these attacks here: " + "; ".join(problems) + ".")


def encoded_hash(encoded: Sequence[Encoded]) -> str:
    """SHA-256 over the exact token ids: what a statistic depends on, whatever text, template or tokenizer."""
    digest = hashlib.sha256()
    for e in encoded:
        digest.update(json.dumps([e.prompt_ids, e.response_ids]).encode())
    return digest.hexdigest()


def cached_arrays(
    host: ScoringHost, kind: str, spec: dict[str, Any], compute: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Arrays built once by ``compute`` and stored under ``spec`` in the cache."""

    def build(tmp: Path) -> None:
        arrays: dict[str, Any] = compute()
        np.savez(tmp / "arrays.npz", **arrays)

    with host.timed(kind):
        path = host.cache.get_or_build(kind, {**spec, "scoring_version": SCORING_VERSION}, build)
    with np.load(path / "arrays.npz") as data:
        return {name: data[name] for name in data.files}


def length_sorted_stats(
    host: ScoringHost, model: Any, encoded: Sequence[Encoded], label: str, pad_id: int | None = None
) -> TokenStats:
    """:func:`compute_token_stats` over ``encoded`` batched by length (padding costs ~45% on the default
    task's attack samples, ~5% sorted), returned in the original order."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    stats = compute_token_stats(
        model, [encoded[i] for i in order], pad_id=host.tokenizer.pad_token_id if pad_id is None else pad_id,
        device=host.device, batch_size=host.batch_size, reporter=host.reporter, label=label,
    )
    position = np.argsort(order)  # where each original sample sits in the sorted pass
    lengths = np.diff(stats.offsets)[position]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = {}
    for name, flat in stats.values.items():
        parts = [flat[stats.offsets[j] : stats.offsets[j + 1]] for j in position]
        values[name] = np.concatenate(parts) if parts else flat
    return TokenStats(offsets=offsets, values=values)


def cached_stats(
    host: ScoringHost, trained: TrainedModel, encoded: list[Encoded], variant: str, pad_id: int | None = None
) -> TokenStats:
    """``trained``'s token statistics on ``encoded`` (one batched pass), cached by model, token ids, variant."""
    spec = {"stage": "variant_stats", "model": trained.key, "variant": variant, "data": encoded_hash(encoded)}

    def compute() -> dict[str, np.ndarray]:
        label = f"scoring {trained.label} ({variant})"
        stats = length_sorted_stats(host, host.load(trained), encoded, label, pad_id)
        return {"offsets": stats.offsets, **stats.values}

    arrays = cached_arrays(host, "token_stats", spec, compute)
    return TokenStats(offsets=arrays.pop("offsets"), values=arrays)


def external_model(ref: str, role: str) -> TrainedModel:
    """A model on disk or on the hub, identified by its name or path and its files' sizes and mtimes."""
    path = Path(ref).expanduser()
    identity: dict[str, Any] = {"ref": models.model_identity(ref)}
    if path.is_dir():
        identity["files"] = sorted(
            (f.name, f.stat().st_size, f.stat().st_mtime) for f in path.iterdir()
            if f.suffix in (".safetensors", ".json") and f.is_file()
        )
    return TrainedModel(role, ref, spec_key(identity), path if path.exists() else Path(ref), ref)
