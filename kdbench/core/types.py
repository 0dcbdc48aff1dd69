"""Artifacts every stage passes along: an encoded example, a training config, a trained model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings ([Z]: AdamW, weight decay 0.01, cosine schedule, gradient clipping 1.0)."""

    lr: float
    epochs: int
    batch_size: int = 16
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    warmup_ratio: float = 0.0


@dataclass(frozen=True)
class Encoded:
    """One example as token ids: the prompt, then the response (ending in EOS)."""

    prompt_ids: tuple[int, ...]
    response_ids: tuple[int, ...]

    @property
    def input_ids(self) -> tuple[int, ...]:
        return self.prompt_ids + self.response_ids


@dataclass
class TrainedModel:
    """A model artifact in the cache: its role, cache key and directory."""

    role: str
    label: str
    key: str
    path: Path
    ref: str
