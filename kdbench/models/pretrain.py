"""Pre-trained bases for the embedded default: the miniature of gpt2-xl → gpt2.

In [Z] every teacher and student starts from a model pre-trained on generic text (GPT-2, OPT, OpenLLaMA). A
student initialised at random has nothing to distil into at first: its on-policy samples are noise, and the
teacher's distribution on noise is what it learns. So the embedded default starts from two pre-trained bases too,
a 4-layer teacher base and a 2-layer student base sharing one byte-level BPE tokenizer, pre-trained on a generated
corpus that is **disjoint from every role of the task**: the same fictional world (cities, employers, banks,
conditions, the same kinds of notes) written about *other* people, as plain paragraphs without the task's
prompt template. A base therefore knows the world's language and how to copy a name or a number from its context,
and has never seen a task record or any of the task's people.

The weights are built by :func:`build_bases` (``kdbench bases build``) and shipped in
``kdbench/models/bases/``: pre-training takes minutes on a 2-core CPU, which would not fit the default run's
cold budget, and shipping makes every machine start from the same bytes whatever its torch build. ``BASES.json``
beside them records the corpus, the recipe, the build's wall time and machine and each file's SHA-256;
:func:`verify` checks them.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdbench.core.data import file_sha256
from kdbench.core.errors import KdbenchError
from kdbench.core.progress import NullReporter, Reporter
from kdbench.core.types import Encoded, TrainConfig
from kdbench.models.hub import (
    PRESETS,
    SHIPPED_DIR,
    SHIPPED_MANIFEST,
    init_model,
    save_model,
    train_bpe_tokenizer,
)
from kdbench.tasks.synthetic import generate, population_names
from kdbench.training.loop import LoopSettings, sft_loss, train_loop

WEIGHT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class CorpusSpec:
    """The generated pre-training corpus: ``generate(seed, n_people, n_records)`` with every record that names
    one of the task's people (``task_seed``/``task_people``, the embedded default's population) left out."""

    seed: int = 20_250_807
    n_people: int = 3_000
    n_records: int = 24_000
    task_seed: int = 1234
    task_people: int = 120


@dataclass(frozen=True)
class BaseSpec:
    """One base: the preset it is built from and its pre-training recipe."""

    name: str
    preset: str
    train: TrainConfig


@dataclass(frozen=True)
class BuildSpec:
    corpus: CorpusSpec = field(default_factory=CorpusSpec)
    vocab_size: int = 2000
    max_tokens: int = 256
    seed: int = 0
    bases: tuple[BaseSpec, ...] = (
        BaseSpec("gpt2-synth-teacher", "gpt2-tiny-teacher",
                 TrainConfig(lr=2e-3, epochs=1, batch_size=32, warmup_steps=100)),
        BaseSpec("gpt2-synth-student", "gpt2-tiny-student",
                 TrainConfig(lr=2e-3, epochs=1, batch_size=32, warmup_steps=100)),
    )


def document(instruction: str, context: str, response: str) -> str:
    """A record as plain text: its parts as paragraphs, without the task's prompt template."""
    return "\n".join(part for part in (instruction, context, response) if part)


def corpus(spec: CorpusSpec) -> list[str]:
    """The corpus documents; none names any of the task's people (checked, not assumed)."""
    task_names = population_names(spec.task_seed, spec.task_people)
    docs = []
    for example in generate(spec.seed, spec.n_people, spec.n_records):
        text = document(example.instruction, example.context, example.response)
        if not any(name in text for name in task_names):
            docs.append(text)
    return docs


def encode_documents(texts: Sequence[str], tokenizer: Any, max_tokens: int) -> list[Encoded]:
    """Plain language modelling: every token after the leading EOS (GPT-2's document separator) is a target."""
    eos = tokenizer.eos_token_id
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [Encoded((eos,), (*row[: max_tokens - 2], eos)) for row in ids]


def pretrain(preset: str, tokenizer: Any, data: Sequence[Encoded], config: TrainConfig, seed: int,
             reporter: Reporter | None = None) -> tuple[Any, list[float]]:
    """A preset initialised with ``seed`` and trained on ``data`` through the shared training loop (on the CPU,
    whose kernels the shipped bytes come from); the model and its loss per step."""
    model = init_model(f"builtin:{preset}", tokenizer, seed)
    settings = LoopSettings(seed=seed, pad_id=tokenizer.pad_token_id, device=torch.device("cpu"),
                            reporter=reporter or NullReporter(), label=f"pre-training {preset}")
    return model, train_loop(model, data, sft_loss, config, settings)


def build_bases(out: Path, spec: BuildSpec | None = None, reporter: Reporter | None = None) -> dict[str, Any]:
    """Build the tokenizer and every base of ``spec`` into ``out`` (replaced whole, only once all are written);
    return the manifest written to ``out/BASES.json``."""
    spec = spec or BuildSpec()
    for base in spec.bases:
        if base.preset not in PRESETS:
            raise KdbenchError(f"base {base.name}: no preset {base.preset!r} in kdbench.models.hub.PRESETS.")
    started = time.perf_counter()
    texts = corpus(spec.corpus)
    tokenizer = train_bpe_tokenizer(texts, spec.vocab_size)
    data = encode_documents(texts, tokenizer, spec.max_tokens)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    entries = {}
    for base in spec.bases:
        t0 = time.perf_counter()
        model, losses = pretrain(base.preset, tokenizer, data, base.train, spec.seed, reporter)
        save_model(model, tokenizer, tmp / base.name)
        entries[base.name] = {
            "preset": base.preset, "train": asdict(base.train), "steps": len(losses),
            "first_loss": losses[0], "final_loss": sum(losses[-20:]) / len(losses[-20:]),
            "wall_s": round(time.perf_counter() - t0, 1),
            "sha256": {name: file_sha256(tmp / base.name / name) for name in WEIGHT_FILES},
        }
    manifest = {
        "built_by": "kdbench bases build",
        "corpus": {**asdict(spec.corpus), "documents": len(texts),
                   "sha256": hashlib.sha256("\n\x1e".join(texts).encode()).hexdigest()},
        "vocab_size": spec.vocab_size, "max_tokens": spec.max_tokens, "seed": spec.seed,
        "bases": entries,
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": {"platform": platform.platform(), "processor": platform.machine(),
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
    }
    (tmp / SHIPPED_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return manifest


def verify(directory: Path = SHIPPED_DIR) -> dict[str, Any]:
    """The shipped manifest, after checking every listed file's SHA-256 (a damaged or edited checkpoint fails)."""
    path = directory / SHIPPED_MANIFEST
    if not path.is_file():
        raise KdbenchError(f"{path}: missing; rebuild the bases with `kdbench bases build`.")
    manifest: dict[str, Any] = json.loads(path.read_text())
    for name, entry in manifest["bases"].items():
        for filename, expected in entry["sha256"].items():
            actual = file_sha256(directory / name / filename)
            if actual != expected:
                raise KdbenchError(f"{directory / name / filename}: SHA-256 {actual[:12]}… is not the "
                                   f"{expected[:12]}… {SHIPPED_MANIFEST} records; rebuild with `kdbench bases build`.")
    return manifest
