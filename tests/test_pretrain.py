"""The embedded default's pre-trained bases (kdbench.models.pretrain): a corpus disjoint from the task, a build
that writes loadable checkpoints with a manifest that catches damage, and the shipped bases being what this code
builds from."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from kdbench.core.errors import KdbenchError
from kdbench.core.types import TrainConfig
from kdbench.models import hub as models
from kdbench.models.pretrain import BaseSpec, BuildSpec, CorpusSpec, build_bases, corpus, encode_documents, verify
from kdbench.tasks.manifest import find_task, load_task
from kdbench.tasks.synthetic import generate, population_names

SMALL = CorpusSpec(seed=5, n_people=60, n_records=120, task_seed=1234, task_people=120)


def test_population_names_are_the_people_the_records_are_about() -> None:
    """Every record names one of population_names' people, and every person is written about: so leaving out
    documents naming them leaves out everything about the task's people."""
    names = population_names(1234, 120)
    records = generate(1234, 120, 1000)
    texts = [" ".join((e.instruction, e.context, e.response)) for e in records]
    assert len(set(names)) == 120
    assert all(any(re.search(rf"\b{re.escape(n)}\b", t) for n in names) for t in texts)
    assert all(any(n in t for t in texts) for n in names)


def test_the_corpus_never_names_a_person_of_the_default_task() -> None:
    task = load_task(find_task("synthetic-pii"))
    params = task.source["params"]
    spec = CorpusSpec()
    assert (spec.task_seed, spec.task_people) == (task.seed, params["n_people"])  # the default task's population
    docs = corpus(spec)
    task_names = population_names(task.seed, params["n_people"])
    joined = "\n".join(docs)
    assert not [n for n in task_names if n in joined]
    assert len(docs) > 0.9 * spec.n_records  # most of the generated world stays: a real corpus, not a remnant
    assert "### Instruction" not in joined  # plain paragraphs, not the task's prompt template


def test_documents_are_trained_on_every_token(tmp_path: Path) -> None:
    tokenizer = models.train_bpe_tokenizer(corpus(SMALL), 300)
    encoded = encode_documents(["Ann lives in Velmora."], tokenizer, max_tokens=64)[0]
    ids = tokenizer("Ann lives in Velmora.", add_special_tokens=False)["input_ids"]
    assert encoded.prompt_ids == (tokenizer.eos_token_id,)
    assert encoded.response_ids == (*ids, tokenizer.eos_token_id)


def test_a_build_writes_loadable_bases_and_verify_catches_damage(tmp_path: Path) -> None:
    spec = BuildSpec(corpus=SMALL, vocab_size=300, max_tokens=64, bases=(
        BaseSpec("micro-a", "gpt2-micro", TrainConfig(lr=3e-3, epochs=1, batch_size=16)),
        BaseSpec("micro-b", "gpt2-micro", TrainConfig(lr=3e-3, epochs=2, batch_size=16)),
    ))
    out = tmp_path / "bases"
    manifest = build_bases(out, spec)
    assert json.loads((out / "BASES.json").read_text()) == manifest
    assert manifest["corpus"]["documents"] == len(corpus(SMALL))
    steps = -(-manifest["corpus"]["documents"] // 16)
    assert manifest["bases"]["micro-a"]["steps"] == steps and manifest["bases"]["micro-b"]["steps"] == 2 * steps
    assert manifest["bases"]["micro-b"]["final_loss"] < manifest["bases"]["micro-b"]["first_loss"]
    for name in ("micro-a", "micro-b"):
        weights = out / name / "model.safetensors"
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
        assert manifest["bases"][name]["sha256"]["model.safetensors"] == digest
        model, tokenizer = models.load_model(str(out / name)), models.load_tokenizer(str(out / name))
        assert model.config.n_layer == 1 and len(tokenizer) == model.config.vocab_size
    assert verify(out) == manifest
    weights = out / "micro-a" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(KdbenchError, match=r"micro-a/model.safetensors: SHA-256"):
        verify(out)
    assert not (tmp_path / "bases.tmp").exists()  # built beside, then renamed into place


def test_the_shipped_bases_are_intact_and_built_from_this_corpus() -> None:
    manifest = verify()
    docs = corpus(CorpusSpec(**{k: manifest["corpus"][k] for k in ("seed", "n_people", "n_records", "task_seed",
                                                                     "task_people")}))
    assert manifest["corpus"]["sha256"] == hashlib.sha256("\n\x1e".join(docs).encode()).hexdigest()
    assert set(manifest["bases"]) == set(models.SHIPPED)
    default = load_task(find_task("synthetic-pii")).models
    assert (default.teacher, default.student) == ("builtin:gpt2-synth-teacher", "builtin:gpt2-synth-student")


def test_a_shipped_base_loads_with_its_tokenizer_and_is_keyed_by_its_weights() -> None:
    ref = "builtin:gpt2-synth-student"
    assert models.is_builtin(ref) and not models.is_preset(ref) and models.is_preset("builtin:gpt2-micro")
    manifest = verify()
    identity = models.model_identity(ref)
    assert identity["sha256"] == manifest["bases"]["gpt2-synth-student"]["sha256"]["model.safetensors"]
    model, tokenizer = models.load_model(ref), models.load_tokenizer(ref)
    assert model.config.n_layer == 2 and len(tokenizer) == model.config.vocab_size
    teacher = models.load_tokenizer("builtin:gpt2-synth-teacher")
    assert teacher.get_vocab() == tokenizer.get_vocab()  # one tokenizer for both, as distillation needs


def test_an_unknown_builtin_names_the_shipped_bases_too() -> None:
    with pytest.raises(KdbenchError, match="gpt2-synth-teacher"):
        models.preset("builtin:gpt2-synth-teachr")


def test_build_spec_names_presets_that_exist() -> None:
    spec = BuildSpec()
    assert all(base.preset in models.PRESETS for base in spec.bases)
    with pytest.raises(KdbenchError, match="no preset"):
        build_bases(Path("/nonexistent/never-written"), replace(spec, corpus=SMALL, bases=(
            BaseSpec("x", "gpt2-nano", TrainConfig(lr=1e-3, epochs=1)),)))


def test_bases_verify_command_reports_the_shipped_hashes(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from kdbench.cli import main

    result = CliRunner().invoke(main, ["bases", "verify"])
    assert result.exit_code == 0, result.output
    assert verify()["bases"]["gpt2-synth-teacher"]["sha256"]["model.safetensors"] in result.output
    missing = CliRunner().invoke(main, ["bases", "verify", "--dir", str(tmp_path)])
    assert missing.exit_code != 0 and "BASES.json: missing" in missing.output
