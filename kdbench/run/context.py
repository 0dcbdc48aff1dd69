"""The cached stages of a cell (DESIGN.md §1): tokenizer, teacher, baseline, student, token statistics and
generations. Each is content-addressed by everything that determines it, so a second run rebuilds nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from kdbench.core.cache import ArtifactCache, spec_key
from kdbench.core.data import Example, content_hash
from kdbench.core.errors import KdbenchError
from kdbench.core.progress import NullReporter, Reporter
from kdbench.core.types import Encoded, TrainConfig, TrainedModel
from kdbench.models import hub as models
from kdbench.models.lora import merged, with_lora
from kdbench.run.plan import effective_lengths, model_positions
from kdbench.tasks.manifest import Task
from kdbench.tasks.splits import Splits
from kdbench.training.loop import LoopSettings, encode, sft_loss, train_loop

# Bump when a stage's code changes what it produces, so stale artifacts are not reused.
STAGE_VERSION = {"tokenizer": 1, "train": 1, "token_stats": 1, "generations": 1}
DEFAULT_TRAINING = {  # [Z]'s values for real models (METHODS.md §3); tasks override them
    "teacher": TrainConfig(lr=5e-5, epochs=5),
    "baseline": TrainConfig(lr=5e-5, epochs=10),
    "student": TrainConfig(lr=5e-5, epochs=10),
}


@dataclass
class RunContext:
    """Everything the stages of one run share."""

    task: Task
    splits: Splits
    cache: ArtifactCache
    device: torch.device
    seed: int
    teacher_ref: str
    student_ref: str
    trust_remote_code: bool = False
    reporter: Reporter = field(default_factory=NullReporter)
    training_overrides: dict[str, TrainConfig] = field(default_factory=dict)  # e.g. a model family's presets
    lora: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> LoRA settings (a family's teacher)
    micro_batch: int | None = None  # rows per training forward pass; not in any cache key (same update)
    timings: dict[str, float] = field(default_factory=dict)
    _tokenizer: Any = None
    _tokenizer_id: dict[str, Any] = field(default_factory=dict)
    _models: dict[str, Any] = field(default_factory=dict)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start

    # --- data -------------------------------------------------------------------------------------------------
    @cached_property
    def lengths(self) -> tuple[int, int]:
        """(prompt, total) token caps: the task's, capped to what the teacher and student take (cache keys keep the
        task's values: the caps follow from them and the models, which the keys name)."""
        return effective_lengths(self.task, model_positions((self.teacher_ref, self.student_ref),
                                                            self.trust_remote_code))

    def encode(self, examples: Sequence[Example], tokenizer: Any = None) -> list[Encoded]:
        """Examples as prompt and response tokens within :attr:`lengths` (the run's tokenizer unless given)."""
        prompt, total = self.lengths
        return encode(examples, tokenizer or self.tokenizer, self.task.template, prompt, total)

    def dtype(self, ref: str) -> torch.dtype | None:
        """bf16 for pretrained models on a CUDA device that supports it; the checkpoint's own dtype otherwise."""
        if models.is_builtin(ref) or self.device.type != "cuda" or not torch.cuda.is_bf16_supported():
            return None
        return torch.bfloat16

    def training(self, stage: str) -> TrainConfig:
        if stage in self.training_overrides:
            return self.training_overrides[stage]
        return self.task.training.get(stage, DEFAULT_TRAINING[stage])

    # --- tokenizer --------------------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer, self._tokenizer_id = self._load_tokenizer()
        return self._tokenizer

    def _load_tokenizer(self) -> tuple[Any, dict[str, Any]]:
        refs = [r for r in (self.teacher_ref, self.student_ref) if not models.is_preset(r)]
        if refs:
            tokenizer = models.load_tokenizer(refs[0], self.trust_remote_code)
            if len(refs) == 2:
                other = models.load_tokenizer(refs[1], self.trust_remote_code)
                if other.get_vocab() != tokenizer.get_vocab():
                    raise models.KdbenchError(
                        f"Teacher {refs[0]} and student {refs[1]} have different tokenizers; distillation needs a "
                        "shared vocabulary. Pick models of one family."
                    )
            return tokenizer, {"from": models.model_identity(refs[0])}
        public = self.splits.roles["public"]
        spec = {
            "stage": "tokenizer",
            "version": STAGE_VERSION["tokenizer"],
            "task": self.task.name,
            "public": content_hash(public),
            "vocab_size": self.task.models.vocab_size,
            "template": asdict(self.task.template),
        }

        def build(tmp: Path) -> None:
            texts = [self.task.template.prompt(e) + e.response for e in public]
            models.train_bpe_tokenizer(texts, self.task.models.vocab_size).save_pretrained(tmp)

        with self.timed("tokenizer"):
            path = self.cache.get_or_build("tokenizer", spec, build)
        return models.load_tokenizer(path), {"key": spec_key(spec)}

    # --- models -----------------------------------------------------------------------------------------------
    def model(self, trained: TrainedModel) -> Any:
        """The trained model, loaded once from the cache and kept for the run."""
        if trained.key not in self._models:
            self._models[trained.key] = models.load_model(trained.path, self.device)
        return self._models[trained.key]

    def _base_spec(self, stage: str, ref: str, data: Sequence[Example], config: TrainConfig) -> dict[str, Any]:
        self.tokenizer  # noqa: B018 - resolves the tokenizer identity
        return {
            "stage": stage,
            "version": STAGE_VERSION["train"],
            "base": models.model_identity(ref),
            "tokenizer": self._tokenizer_id,
            "data": content_hash(data),
            "template": asdict(self.task.template),
            "lengths": [self.task.models.max_prompt_tokens, self.task.models.max_total_tokens],
            "train": asdict(config),
            "precision": str(self.dtype(ref) or "checkpoint"),
            "seed": self.seed,
        }

    def sft(self, role: str, ref: str, data: Sequence[Example]) -> TrainedModel:
        """Fine-tune a base model on ``data`` with cross-entropy: the teacher, and the no-KD baseline."""
        return self.fine_tune(role, ref, data, self.training(role))

    def fine_tune(
        self, stage: str, ref: str, data: Sequence[Example], config: TrainConfig, label: str | None = None
    ) -> TrainedModel:
        """Cross-entropy fine-tuning of ``ref`` on ``data`` under any recipe, cached: :meth:`sft`, and the
        reference and shadow models attacks ask for (kdbench.scoring.context)."""
        label = label or stage
        spec = self._base_spec(stage, ref, data, config)
        lora = self.lora.get(stage)
        if lora:
            spec["lora"] = lora

        def build(tmp: Path) -> None:
            model = models.init_model(ref, self.tokenizer, self.seed, self.trust_remote_code, dtype=self.dtype(ref))
            if lora:
                model = with_lora(model, int(lora["r"]), lora["alpha"], lora["dropout"])
            settings = LoopSettings(
                seed=self.seed, pad_id=self.tokenizer.pad_token_id, device=self.device, reporter=self.reporter,
                label=f"training {label}", micro_batch=self.micro_batch,
            )
            losses = train_loop(model, self.encode(data), sft_loss, config, settings)
            if lora:
                model = merged(model)
            models.save_model(model, self.tokenizer, tmp)
            (tmp / "losses.json").write_text(json.dumps(losses))

        with self.timed(stage):
            path = self.cache.get_or_build("model", spec, build)
        return TrainedModel(stage, label, spec_key(spec), path, ref)

    def teacher(self) -> TrainedModel:
        return self.sft("teacher", self.teacher_ref, self.splits.roles["private"])

    def baseline(self) -> TrainedModel:
        return self.sft("baseline", self.student_ref, self.distillation_data())

    def distillation_data(self) -> list[Example]:
        return self.splits.roles[self.task.distill_on]

    def pretraining_texts(self) -> list[str]:
        """The text of distillers' language-modelling term (``lm_coef``): the task's ``pretrain_text`` file (one
        document per line, relative to the task file), else the public split's prompts and responses as plain
        text (no model is evaluated on it, and every run has it)."""
        if self.task.pretrain_text is None:
            return [self.task.template.prompt(e) + e.response for e in self.splits.roles["public"]]
        path = Path(self.task.pretrain_text).expanduser()
        path = path if path.is_absolute() else self.task.path.parent / path
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise KdbenchError(f"{self.task.path}: key 'pretrain_text' names {path}, which cannot be read "
                               f"({exc.strerror or exc}). Give a UTF-8 text file, one document per line.") from None
        texts = [line for line in lines if line.strip()]
        if not texts:
            raise KdbenchError(f"{self.task.path}: the 'pretrain_text' file {path} has no text.")
        return texts

    def pretraining_data(self) -> list[Encoded]:
        """:meth:`pretraining_texts` tokenised whole and cut to the task's total length, every token after the
        first a target (cross-entropy on all of the text, as a language model trains)."""
        rows = self.tokenizer(self.pretraining_texts(), add_special_tokens=False)["input_ids"]
        limit = self.task.models.max_total_tokens
        return [Encoded((ids[0],), tuple(ids[1:limit])) for ids in rows if len(ids) > 1]
