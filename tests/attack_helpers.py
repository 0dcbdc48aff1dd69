"""A tiny world for the attack tests: a memorising causal LM and one that saw neither sample file, built from
configs, trained in seconds, saved to disk and reloaded (no downloads). Built once per process."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kdbench.analysis.audit import TEXT, AuditHost, encode_text
from kdbench.core.cache import ArtifactCache
from kdbench.core.data import Example
from kdbench.core.types import Encoded, TrainConfig
from kdbench.models import hub as models
from kdbench.scoring.context import ScoringContext, external_model
from kdbench.tasks import synthetic
from kdbench.testing import single_thread
from kdbench.training.loop import LoopSettings, sft_loss, train_loop

SEED = 5
N = 16  # members, non-members and reference texts each
MAX_TOKENS = 40  # samples are cut to this many tokens (as `kdbench audit --max-tokens 40` does)
BASE = "builtin:gpt2-micro"
MEMORISE = TrainConfig(lr=1e-2, epochs=30, batch_size=8)
# lira: shadows get the recipe that made the memoriser
SHADOW: dict[str, Any] = {"lr": MEMORISE.lr, "epochs": MEMORISE.epochs, "batch_size": MEMORISE.batch_size}
CPU = torch.device("cpu")


@dataclass(frozen=True)
class AttackWorld:
    root: Path
    tokenizer: Any
    members: list[Example]
    nonmembers: list[Example]
    reference: list[Example]  # same domain, in neither file: a reference corpus and the outsider's training data
    memorizer: Path  # trained to memorise the members
    outsider: Path  # trained on the reference texts only: saw neither file

    def file(self, name: str) -> Path:
        return self.root / name

    def host(self, model: Path | None = None, cache: ArtifactCache | None = None) -> AuditHost:
        return AuditHost(
            external_model(str(model or self.memorizer), "target"), cache=cache or ArtifactCache(self.root / "cache"),
            device=CPU, max_tokens=MAX_TOKENS, base=BASE, reference_text=self.reference, seed=SEED,
        )

    def scoring(self, host: AuditHost | None = None, samples: Sequence[Example] | None = None) -> ScoringContext:
        host = host or self.host()
        return ScoringContext(host, host.target, list(samples or self.members + self.nonmembers))

    def encode(self, texts: Sequence[str]) -> list[Encoded]:
        """MIMIR's encoding, written here rather than through kdbench's: ``tokenizer(text)`` (this tokenizer adds
        no BOS), cut to MAX_TOKENS, every token after the first scored."""
        rows = [self.tokenizer(t)["input_ids"][:MAX_TOKENS] for t in texts]
        assert all(len(ids) > 1 for ids in rows)
        return [Encoded((ids[0],), tuple(ids[1:])) for ids in rows]


def _train(tokenizer: Any, texts: Sequence[str], out: Path) -> Path:
    model = models.init_model(BASE, tokenizer, SEED)
    data = [encode_text(t, tokenizer, MAX_TOKENS) for t in texts]
    train_loop(model, [e for e in data if e is not None], sft_loss, MEMORISE,
               LoopSettings(seed=SEED, pad_id=tokenizer.pad_token_id, device=CPU))
    models.save_model(model, tokenizer, out)
    return out


@functools.cache
def attack_world(root: Path) -> AttackWorld:
    with single_thread():
        records = synthetic.generate(seed=SEED, n_people=10, n_records=3 * N + 6)
        # the responses without their opening aside: whole texts must fit the micro model's 128 positions for the
        # tests' own unbatched reference passes (MIMIR scores texts uncut)
        texts = list(dict.fromkeys(e.response.split("): ", 1)[-1] for e in records))[: 3 * N]
        samples = [Example(f"s{i}", "", "", t, TEXT) for i, t in enumerate(texts)]
        members, nonmembers, reference = samples[:N], samples[N : 2 * N], samples[2 * N :]
        root.mkdir(parents=True, exist_ok=True)
        tokenizer = models.train_bpe_tokenizer(texts, 400)
        for name, part in (("members.txt", members), ("nonmembers.txt", nonmembers), ("reference.txt", reference)):
            (root / name).write_text("".join(e.response + "\n" for e in part), encoding="utf-8")
        memorizer = _train(tokenizer, [e.response for e in members], root / "memorizer")
        outsider = _train(tokenizer, [e.response for e in reference], root / "outsider")
    return AttackWorld(root, models.load_tokenizer(memorizer), members, nonmembers, reference, memorizer, outsider)


def log_softmax(model: Any, encoded: Encoded) -> torch.Tensor:
    """log q over the vocabulary at every response position of one unbatched sequence (a reference
    computation for the tests, independent of kdbench's batching)."""
    ids = torch.tensor([encoded.input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].double()
    return torch.log_softmax(logits, -1)[len(encoded.prompt_ids) - 1 :]


def token_logprobs(model: Any, encoded: Encoded) -> np.ndarray:
    logq = log_softmax(model, encoded)
    return logq.gather(-1, torch.tensor(encoded.response_ids).unsqueeze(-1)).squeeze(-1).numpy()


def auc(scores: np.ndarray, n_members: int) -> float:
    from kdbench.evaluation.metrics import roc_auc

    return roc_auc(scores[:n_members], scores[n_members:])


# --- autouse fixtures: a module that imports one gets it for each of its tests (`world` is in conftest.py) ----


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    with single_thread():
        yield


@pytest.fixture(autouse=True)
def one_thread_own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One thread, and a cache of the test's own (for tests that count what was built)."""
    monkeypatch.setenv("KDBENCH_CACHE_DIR", str(tmp_path / "cache"))
    with single_thread():
        yield
