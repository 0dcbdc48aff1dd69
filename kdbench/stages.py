"""The cached stages of a cell (DESIGN.md §1): tokenizer, teacher, baseline, student, token statistics and
generations. Each is content-addressed by everything that determines it, so a second run rebuilds nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdbench import models
from kdbench.cache import ArtifactCache, spec_key
from kdbench.data import Example, content_hash
from kdbench.defense import REPORT_FILE, DefenseContext, DefenseStack, attack_scorer, model_config
from kdbench.distill import DistillJob
from kdbench.errors import KdbenchError
from kdbench.lora import merged, with_lora
from kdbench.params import params_dict
from kdbench.progress import NullReporter, Reporter
from kdbench.tasks import Splits, Task
from kdbench.tokenstats import TokenStats, compute_token_stats
from kdbench.training import Encoded, TrainConfig, encode, generate, sft_loss, train_loop

# Bump when a stage's code changes what it produces, so stale artifacts are not reused.
STAGE_VERSION = {"tokenizer": 1, "train": 1, "token_stats": 1, "generations": 1}
DEFAULT_TRAINING = {  # [Z]'s values for real models (METHODS.md §3); tasks override them
    "teacher": TrainConfig(lr=5e-5, epochs=5),
    "baseline": TrainConfig(lr=5e-5, epochs=10),
    "student": TrainConfig(lr=5e-5, epochs=10),
}


@dataclass
class TrainedModel:
    """A model artifact in the cache: its role, cache key and directory."""

    role: str
    label: str
    key: str
    path: Path
    ref: str


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
    def encode(self, examples: Sequence[Example]) -> list[Encoded]:
        m = self.task.models
        return encode(examples, self.tokenizer, self.task.template, m.max_prompt_tokens, m.max_total_tokens)

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
        refs = [r for r in (self.teacher_ref, self.student_ref) if not models.is_builtin(r)]
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
        reference and shadow models attacks ask for (kdbench.scoring)."""
        label = label or stage
        spec = self._base_spec(stage, ref, data, config)
        lora = self.lora.get(stage)
        if lora:
            spec["lora"] = lora

        def build(tmp: Path) -> None:
            model = models.init_model(ref, self.tokenizer, self.seed, self.trust_remote_code, dtype=self.dtype(ref))
            if lora:
                model = with_lora(model, int(lora["r"]), lora["alpha"], lora["dropout"])
            losses = train_loop(
                model, self.encode(data), sft_loss, config, seed=self.seed, pad_id=self.tokenizer.pad_token_id,
                device=self.device, reporter=self.reporter, label=f"training {label}", micro_batch=self.micro_batch,
            )
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

    def student(
        self,
        teacher: TrainedModel,
        distiller: Any,
        distiller_label: str,
        defenses: DefenseStack,
        defense_label: str,
        attack_samples: tuple[Sequence[Example], Sequence[Example]] | None = None,
    ) -> TrainedModel:
        """Distil a student from ``teacher`` with ``distiller``, under ``defenses``: each hook at its stage
        (kdbench.defense), one student per shard a defense asks for, the defenses' report saved beside it.
        ``attack_samples`` (members, non-members) set the thresholds of defenses that use the teacher's attack."""
        config = self.training("student")
        data = self.distillation_data()
        if defenses.checks:
            defenses.check(model_config(self.student_ref, self.trust_remote_code), distiller.name)
        spec = self._base_spec("student", self.student_ref, data, config)
        spec.update(
            teacher=teacher.key,
            distiller={"name": distiller.name, "params": params_dict(distiller.params)},
            defenses=[{"name": d.name, "params": params_dict(d.params)} for d in defenses.defenses],
        )
        if defenses.uses_attack_samples:
            if attack_samples is None:
                raise KdbenchError(f"Defense stack {defense_label!r} sets thresholds on members and non-members; "
                                   "pass attack_samples.")
            spec["attack_samples"] = [content_hash(samples) for samples in attack_samples]

        def build(tmp: Path) -> None:
            defenses.prepare(self.defense_context(teacher, config, data, attack_samples))
            shards = defenses.shards(defenses.select_data(data))
            students = []
            for index, shard in enumerate(shards):
                defenses.start_student(index, len(shard))
                part = f" student {index + 1}/{len(shards)}" if len(shards) > 1 else ""
                job = DistillJob(
                    teacher=self.model(teacher),
                    student=defenses.modify_student(models.init_model(
                        self.student_ref, self.tokenizer, self.seed, self.trust_remote_code,
                        dtype=self.dtype(self.student_ref),
                    )),
                    tokenizer=self.tokenizer,
                    data=self.encode(shard),
                    config=config,
                    seed=self.seed,
                    device=self.device,
                    teacher_key=teacher.key,
                    cache=self.cache,
                    defenses=defenses,
                    reporter=self.reporter,
                    label=f"distilling {distiller_label} [{defense_label}]{part}",
                    max_total_tokens=self.task.models.max_total_tokens,
                    micro_batch=self.micro_batch,
                )
                students.append(distiller.distill(job))
                defenses.finish_student(index, students[-1])
            models.save_model(defenses.postprocess(students), self.tokenizer, tmp)
            (tmp / REPORT_FILE).write_text(json.dumps(defenses.report(), indent=1, sort_keys=True))

        with self.timed(f"student {distiller_label} [{defense_label}]"):
            path = self.cache.get_or_build("model", spec, build)
        return TrainedModel("student", f"{distiller_label} [{defense_label}]", spec_key(spec), path, self.student_ref)

    def defense_context(
        self,
        teacher: TrainedModel,
        config: TrainConfig,
        data: Sequence[Example],
        attack_samples: tuple[Sequence[Example], Sequence[Example]] | None,
    ) -> DefenseContext:
        """What the defenses may read (kdbench.defense.DefenseContext); the teacher's attack scores come from
        the same cached token statistics the evaluation uses."""
        from kdbench.scoring import RunHost  # here: kdbench.scoring imports this module

        members, nonmembers = attack_samples if attack_samples is not None else ((), ())
        return DefenseContext(
            teacher=teacher, teacher_model=self.model(teacher), tokenizer=self.tokenizer, encode=self.encode,
            teacher_scores=attack_scorer(RunHost(self), teacher), config=config, distillation=data, members=members,
            nonmembers=nonmembers, seed=self.seed, device=self.device,
        )

    # --- evaluation artifacts ---------------------------------------------------------------------------------
    def token_stats(self, trained: TrainedModel, samples: Sequence[Example]) -> TokenStats:
        spec = {
            "stage": "token_stats",
            "version": STAGE_VERSION["token_stats"],
            "model": trained.key,
            "samples": content_hash(samples),
            "template": asdict(self.task.template),
            "lengths": [self.task.models.max_prompt_tokens, self.task.models.max_total_tokens],
        }

        def build(tmp: Path) -> None:
            stats = compute_token_stats(
                self.model(trained), self.encode(samples), pad_id=self.tokenizer.pad_token_id, device=self.device,
                reporter=self.reporter, label=f"scoring {trained.label}",
            )
            stats.save(tmp / "stats.npz")

        with self.timed("token statistics"):
            path = self.cache.get_or_build("token_stats", spec, build)
        return TokenStats.load(path / "stats.npz")

    def generations(self, trained: TrainedModel, samples: Sequence[Example], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuations of the samples' prompts."""
        spec = {
            "stage": "generations",
            "version": STAGE_VERSION["generations"],
            "model": trained.key,
            "samples": content_hash(samples),
            "template": asdict(self.task.template),
            "max_prompt": self.task.models.max_prompt_tokens,
            "max_new_tokens": max_new_tokens,
        }

        def build(tmp: Path) -> None:
            prompts = [e.prompt_ids for e in self.encode(samples)]
            out = generate(
                self.model(trained), prompts, max_new_tokens=max_new_tokens, pad_id=self.tokenizer.pad_token_id,
                eos_id=self.tokenizer.eos_token_id, device=self.device, reporter=self.reporter,
                label=f"generating {trained.label}",
            )
            (tmp / "generations.json").write_text(json.dumps(out))

        with self.timed("generation"):
            path = self.cache.get_or_build("generations", spec, build)
        result: list[list[int]] = json.loads((path / "generations.json").read_text())
        return result
