"""What ``redlist`` and ``temperature`` share ([C] v1, METHODS.md §7): after distillation, the logits of every
token that occurs in a *vulnerable* text are changed at every position. Vulnerable texts are the distillation
points the teacher's attack flags, exactly as ``nonvulnerable`` flags them (the same threshold rule); their
tokens are those of the full text as the model reads it (prompt template, instruction, context, response;
EOS excluded), as [C] tokenises whole texts. The student is wrapped in :class:`LogitAdjustedLM`, which saves
itself beside a marker so that the cache and :func:`kdbench.models.hub.load_model` give it back wrapped."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.modeling_outputs import CausalLMOutput

from kdbench.api import (
    DefenseBase,
    KdbenchError,
    check_range,
    flag_vulnerable,
    inside,
    load_model,
    resolve_attack,
    write_marker,
)

BASE_DIR = "base"


class LogitAdjustedLM(nn.Module):
    """A causal LM whose logits of ``token_ids`` are shifted by −``value`` (``subtract``) or multiplied by
    ``value`` (``scale``); every other logit is untouched. Greedy ``generate`` goes through the same change."""

    base: Any
    token_ids: torch.Tensor

    def __init__(self, base: Any, token_ids: Sequence[int], operation: str, value: float, defense: str) -> None:
        super().__init__()
        if operation not in ("subtract", "scale"):
            raise ValueError(f"operation must be subtract or scale, got {operation!r}")
        self.base, self.operation, self.value, self.defense = base, operation, float(value), defense
        self.register_buffer("token_ids", torch.tensor(sorted(set(token_ids)), dtype=torch.long), persistent=False)

    @property
    def config(self) -> Any:
        return self.base.config

    def adjust(self, logits: torch.Tensor) -> torch.Tensor:
        ids = self.token_ids.to(logits.device)
        listed = logits.index_select(-1, ids)
        changed = listed - self.value if self.operation == "subtract" else listed * self.value
        return logits.index_copy(-1, ids, changed)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        logits = self.base(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits
        return CausalLMOutput(logits=self.adjust(logits))

    def generate(self, **kwargs: Any) -> Any:
        processors = LogitsProcessorList([_Adjust(self), *(kwargs.pop("logits_processor", None) or [])])
        return self.base.generate(**kwargs, logits_processor=processors)

    def save_pretrained(self, directory: str | Path, **kwargs: Any) -> None:
        directory = Path(directory)
        self.base.save_pretrained(directory / BASE_DIR, **kwargs)
        write_marker(directory, self.defense, base=BASE_DIR, operation=self.operation, value=self.value,
                     token_ids=self.token_ids.tolist())


class _Adjust(LogitsProcessor):
    def __init__(self, model: LogitAdjustedLM) -> None:
        self.model = model

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.model.adjust(scores)  # type: ignore[return-value]


@dataclass(frozen=True)
class VulnerableTokenParams:
    """``attack``: the teacher attack that flags vulnerable texts; ``min_class_fraction``: its threshold guard."""

    attack: str = "loss"
    min_class_fraction: float = 0.2

    def __post_init__(self) -> None:
        check_range("vulnerable tokens", "min_class_fraction", self.min_class_fraction, 0.0, 0.5)
        resolve_attack(self.attack, "vulnerable tokens")


class VulnerableTokenDefense(DefenseBase):
    """Wraps the finished student so that the logits of tokens of vulnerable texts change (see the module)."""

    stages: ClassVar[frozenset[str]] = frozenset({"postprocess"})
    uses_attack_samples = True
    operation: ClassVar[str]

    def __init__(self, params: Any) -> None:
        super().__init__(params)
        self.attack = resolve_attack(params.attack, self.name)
        self._report: dict[str, Any] = {}

    def value(self) -> float:
        raise NotImplementedError

    def vulnerable_tokens(self) -> list[int]:
        """Token ids of the distillation texts the teacher's attack flags."""
        context = self.context
        if context is None:
            raise KdbenchError(f"Defense {self.name!r} needs the run's DefenseContext (DefenseStack.prepare) first.")
        data = list(context.distillation)
        flags, threshold = flag_vulnerable(context, self.attack, data, self.params.min_class_fraction, self.name)
        vulnerable = [x for x, flag in zip(data, flags, strict=True) if flag]
        eos = context.tokenizer.eos_token_id
        encoded = context.encode(vulnerable) if vulnerable else []
        ids = {t for e in encoded for t in (*e.prompt_ids, *e.response_ids) if t != eos}
        self._report = {"attack": self.params.attack, "threshold": threshold, "n_distillation": len(data),
                        "n_vulnerable": int(flags.sum()), "n_tokens": len(ids)}
        return sorted(ids)

    def postprocess(self, students: Sequence[Any]) -> Any:
        if len(students) != 1:
            raise KdbenchError(f"{self.name} post-processes one student, got {len(students)}.")
        return LogitAdjustedLM(students[0], self.vulnerable_tokens(), self.operation, self.value(), self.name)

    def report(self) -> dict[str, Any]:
        return self._report

    @classmethod
    def load_processed(cls, directory: Path, marker: dict[str, Any], trust_remote_code: bool = False) -> Any:
        base = load_model(inside(directory, marker.get("base"), "the marker's 'base'"),
                          trust_remote_code=trust_remote_code)
        return LogitAdjustedLM(base, marker["token_ids"], marker["operation"], marker["value"], marker["defense"])
