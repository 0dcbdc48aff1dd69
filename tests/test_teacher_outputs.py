"""Teacher outputs computed once: adaptive truncation, 16-bit storage read per batch, accuracy against the full
softmax, alignment, caching, output defenses, and the live-or-cached choice."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch

from kdbench.core.cache import ArtifactCache
from kdbench.core.errors import ParameterError
from kdbench.core.types import TrainConfig
from kdbench.defense.base import DefenseBase
from kdbench.defense.stack import DefenseStack
from kdbench.distill.job import DistillJob, attached, distillation_loss
from kdbench.distill.teacher_outputs import (
    DEFAULT_TOP_K,
    SOURCE_ENV,
    TOLERANCE,
    IdEncoding,
    sequences_hash,
    teacher_hook,
    teacher_outputs,
)
from kdbench.training.loop import LoopSettings, batches, sft_loss, shifted, train_loop
from kdbench.training.objectives import OBJECTIVES
from tests.distill_helpers import (
    data,
    job,
    single_thread,  # noqa: F401 - autouse fixture
    tiny_model,
    tokenizer,
)


@dataclass(frozen=True)
class TemperatureParams:
    temperature: float = 2.0


class Temperature(DefenseBase):
    """A teacher-output defense: logits divided by a temperature."""

    name = "temperature"
    description = "test defense"
    Params = TemperatureParams
    stages: ClassVar[frozenset[str]] = frozenset({"teacher_outputs"})

    def transform_teacher_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.params.temperature


@functools.lru_cache(maxsize=1)
def trained_teacher() -> torch.nn.Module:
    """A teacher fitted to the data for a few epochs: peaked distributions, like a real fine-tuned teacher.
    Shared by the tests, which only run it in eval mode."""
    teacher = tiny_model(1, n_embd=48)
    train_loop(teacher, data(), sft_loss, TrainConfig(lr=1e-2, epochs=4, batch_size=4),
               LoopSettings(seed=0, pad_id=tokenizer().pad_token_id, device=torch.device("cpu")))
    return teacher


def shuffled_batches(j):
    for idx, batch in batches(j.data, j.config.batch_size, j.pad_id, torch.Generator().manual_seed(3)):
        batch["index"] = torch.tensor(idx)
        yield batch


def loss_gaps(j, outputs, objective: str) -> list[float]:
    """|objective(cached top-k) − objective(full teacher logits)| per batch, for the job's student."""
    loss_of = OBJECTIVES[objective]
    gaps = []
    with torch.no_grad():
        for batch in shuffled_batches(j):
            batch = outputs(0, batch)
            student = j.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            _, mask = shifted(batch)
            cached = attached(batch)
            assert cached is not None
            full = j.teacher_logits(batch)[:, :-1]
            gaps.append(abs(float(loss_of(student, cached, mask)) - float(loss_of(student, full, mask))))
    return gaps



def softmax64(j, batch) -> torch.Tensor:
    """The teacher's next-token distribution in float64, straight from its logits: the reference."""
    with torch.no_grad():
        return torch.softmax(j.teacher_logits(batch)[:, :-1].double(), dim=-1)


@pytest.mark.parametrize("objective", ["fkl", "srkl", "jsd"])
def test_cached_outputs_reproduce_the_full_logit_loss(objective: str) -> None:
    for teacher in (tiny_model(1), trained_teacher()):
        j = job(teacher=teacher)
        gaps = loss_gaps(j, teacher_outputs(j), objective)
        assert max(gaps) < TOLERANCE, (objective, gaps)


def test_fkl_from_streamed_16_bit_outputs_is_within_the_documented_bound() -> None:
    """docs/running.md: per position, |fkl(cached) − fkl(full)| ≤ t·(max − min of −log q over the dropped
    tokens) + 2^-11·Σ p·|log q| (16-bit rounding), t the teacher mass left out; the batch loss is the mean over
    positions. The reference loss and t are computed here by hand from the float64 softmax."""
    j = job(teacher=trained_teacher())
    outputs = teacher_outputs(j)
    with torch.no_grad():
        for batch in shuffled_batches(j):
            student = j.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            _, mask = shifted(batch)
            log_q = torch.log_softmax(student.double(), dim=-1)[mask]
            p = softmax64(j, batch)[mask]
            full = float(-(p * log_q).sum(-1).mean())
            cached = attached(outputs(0, batch))
            assert cached is not None and cached.counts is not None
            got = float(OBJECTIVES["fkl"](student, cached, mask))
            stored = torch.zeros_like(p, dtype=torch.bool)
            for row, (ids, n) in enumerate(zip(cached.indices[mask], cached.counts[mask], strict=True)):
                stored[row, ids[:n]] = True
            left_out = (p * ~stored).sum(-1)
            spread = (-log_q).masked_fill(stored, -math.inf).amax(-1) - (-log_q).masked_fill(stored, math.inf).amin(-1)
            truncation = torch.where(stored.all(-1), 0.0, left_out * spread)
            bound = float((truncation + 2.0**-11 * (p * -log_q).sum(-1)).mean())
            assert abs(got - full) <= bound, (got, full, bound)
            assert abs(got - full) > 0  # it does truncate: the test compares two different things


def test_each_position_keeps_the_fewest_tokens_whose_dropped_mass_is_within_the_bound() -> None:
    j = job(teacher=trained_teacher())
    outputs = teacher_outputs(j, tail_bound=0.1)
    kept = outputs.kept().numpy()
    want = []  # reference: each example alone, its float64 softmax sorted, counted until 1 − mass ≤ 0.1
    for example in j.data:
        ids = torch.tensor([example.input_ids])
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        p = softmax64(j, batch)[0, len(example.prompt_ids) - 1 : len(example.input_ids) - 1].numpy()
        mass = np.cumsum(-np.sort(-p, axis=-1), axis=-1)
        want += [min(int(np.argmax(1.0 - m <= 0.1)) + 1, DEFAULT_TOP_K) for m in mass]
    assert kept.tolist() == want
    assert len(set(want)) > 1  # positions keep different numbers of tokens: the truncation adapts
    uncapped = torch.tensor(want) < DEFAULT_TOP_K
    assert float(outputs.tail_mass()[uncapped].max()) <= 0.1 + 2e-3  # float16 rounding of the kept probabilities


def test_probabilities_are_stored_in_16_bits_within_half_an_ulp() -> None:
    j = job(teacher=trained_teacher())
    outputs = teacher_outputs(j)
    sizes = {f.name: f.stat().st_size for f in outputs.directory.iterdir()}
    assert sizes["probs.bin"] == 2 * outputs.entries  # float16
    # ids: uint16 each (vocab ≤ 65,536), or a ⌈V/8⌉-byte bitmap where that is smaller
    counts, bitmap = outputs.kept().numpy(), -(-len(tokenizer()) // 8)
    assert sizes["indices.bin"] == sum(min(2 * int(c), bitmap) for c in counts)
    for batch in shuffled_batches(j):
        cached = attached(outputs(0, batch))
        _, mask = shifted(batch)
        assert cached is not None and cached.counts is not None
        p = softmax64(j, batch)[mask]
        stored = cached.logprobs[mask].double().exp()
        true = p.gather(-1, cached.indices[mask])
        slots = torch.arange(stored.shape[-1]) < cached.counts[mask][:, None]
        rel = ((stored - true).abs() / true)[slots & (true > 2.0**-14)]  # float16's normal range
        assert float(rel.max()) <= 2.0**-11 * 1.01 + 1e-6  # + float32 softmax error


def test_whole_vocabulary_storage_is_exact_up_to_16_bits() -> None:
    j = job()
    gaps = loss_gaps(j, teacher_outputs(j, k=len(tokenizer()), tail_bound=0.0), "fkl")
    assert max(gaps) < 1e-3


def test_a_batch_reads_only_its_own_examples(monkeypatch) -> None:
    j = job(teacher=trained_teacher())
    outputs = teacher_outputs(j)
    kept = outputs.kept()
    ends = np.cumsum([len(e.response_ids) for e in j.data])
    bitmap = -(-len(tokenizer()) // 8)
    reads: list[tuple[str, int]] = []
    real = np.fromfile
    monkeypatch.setattr(np, "fromfile", lambda *a, **kw: reads.append((a[0].name, kw["count"])) or real(*a, **kw))
    for batch in shuffled_batches(j):
        reads.clear()
        outputs(0, batch)
        mine = [kept[ends[i] - len(j.data[i].response_ids) : ends[i]] for i in batch["index"].tolist()]
        entries = sum(int(c.sum()) for c in mine)
        id_bytes = sum(min(2 * int(c), bitmap) for counts in mine for c in counts)
        assert sum(n for name, n in reads if name == "probs.bin") == entries < outputs.entries
        assert sum(n for name, n in reads if name == "indices.bin") == id_bytes  # the batch's examples only


def test_outputs_line_up_with_the_response_positions_of_any_batch() -> None:
    j = job(teacher=trained_teacher())
    outputs = teacher_outputs(j, k=8)
    for batch in shuffled_batches(j):
        batch = outputs(0, batch)
        _, mask = shifted(batch)
        probs, ids = softmax64(j, batch).topk(8, dim=-1)
        cached = attached(batch)
        assert cached is not None and cached.counts is not None
        counts = cached.counts[mask]
        for row in range(int(mask.sum())):
            n = int(counts[row])
            assert torch.equal(cached.indices[mask][row, :n], ids[mask][row, :n])
            torch.testing.assert_close(cached.logprobs[mask][row, :n].double(), probs[mask][row, :n].log(),
                                       atol=1e-3, rtol=0)


def test_outputs_are_computed_once_then_read_from_the_cache(tmp_path) -> None:
    cache = ArtifactCache(tmp_path)
    teacher = tiny_model(1)
    calls = []
    teacher.register_forward_hook(lambda *args: calls.append(1))
    first = teacher_outputs(job(teacher=teacher, cache=cache, teacher_key="t"), k=16)
    assert len(calls) == 1 and len(cache.builds) == 1  # 16 examples: one batch of 32
    second = teacher_outputs(job(teacher=teacher, cache=cache, teacher_key="t"), k=16)
    assert len(calls) == 1 and len(cache.hits) == 1 and first.directory == second.directory
    teacher_outputs(job(teacher=teacher, cache=cache, teacher_key="t", data_=data(8)), k=16)  # other sequences
    teacher_outputs(job(teacher=teacher, cache=cache, teacher_key="t"), k=8)  # other k
    teacher_outputs(job(teacher=teacher, cache=cache, teacher_key="t"), k=16, tail_bound=0.2)  # other bound
    teacher_outputs(job(teacher=teacher, cache=cache, teacher_key="u"), k=16)  # other teacher
    assert len(cache.builds) == 5


def test_output_defenses_apply_before_the_truncation_and_key_the_cache(tmp_path) -> None:
    cache = ArtifactCache(tmp_path)
    teacher = trained_teacher()
    defenses = DefenseStack([Temperature(TemperatureParams())])
    defended = job(teacher=teacher, cache=cache, teacher_key="t", defenses=defenses)
    plain = teacher_outputs(job(teacher=teacher, cache=cache, teacher_key="t"), k=8)
    hot = teacher_outputs(defended, k=8)
    assert len(cache.builds) == 2 and plain.directory != hot.directory
    batch = next(shuffled_batches(defended))
    with torch.no_grad():
        raw = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    want = torch.log_softmax(raw.double() / 2.0, dim=-1)  # softmax of the defended logits, then truncation
    cached = attached(hot(0, batch))
    _, mask = shifted(batch)
    assert cached is not None and cached.counts is not None
    first = cached.logprobs[mask][:, 0].double()
    torch.testing.assert_close(first, want[mask].gather(-1, cached.indices[mask][:, :1])[:, 0], atol=1e-3, rtol=0)


def test_outputs_for_other_sequences_are_refused() -> None:
    j = job()
    outputs = teacher_outputs(j, k=4)
    other = job(data_=list(reversed(data())))
    assert sequences_hash(other.data) != sequences_hash(j.data)
    with pytest.raises(ValueError, match="computed for other sequences"):
        for batch in shuffled_batches(other):
            outputs(0, batch)


def test_batches_without_an_index_keep_the_live_teacher() -> None:
    j = job()
    batch = next(shuffled_batches(j))
    del batch["index"]
    assert attached(teacher_outputs(j, k=4)(0, batch)) is None


# --- live or cached ---------------------------------------------------------------------------------------


def kd_losses(j: DistillJob, source: str) -> list[float]:
    hook = teacher_hook(j, source=source)
    assert (hook is None) == (source == "live") and j.notes["teacher_outputs"]["source"] == source
    return j.train(distillation_loss(j, "fkl"), j.config, hook)


def test_live_and_cached_teachers_train_alike_within_the_truncation_error() -> None:
    """The same KD run with the teacher run live (no truncation) and read from the cache: per-step losses
    agree within the documented tolerance."""
    live_job, cached_job = job(teacher=trained_teacher()), job(teacher=trained_teacher())
    live, cached = kd_losses(live_job, "live"), kd_losses(cached_job, "cached")
    assert len(live) == len(cached) > 1
    assert max(abs(a - b) for a, b in zip(live, cached, strict=True)) < TOLERANCE, (live, cached)
    assert live != cached  # truncation does change the targets: the comparison is not vacuous


def test_the_measured_choice_and_its_reason_are_noted(monkeypatch) -> None:
    monkeypatch.delenv(SOURCE_ENV, raising=False)
    j = job(teacher=trained_teacher())
    hook = teacher_hook(j)
    note = j.notes["teacher_outputs"]
    assert note["source"] in ("live", "cached") and (hook is None) == (note["source"] == "live")
    faster = "live" if note["teacher_forward_s"] <= note["cached_read_s"] else "cached"
    assert note["source"] == faster and "s/batch" in note["reason"]
    monkeypatch.setenv(SOURCE_ENV, "cached")
    assert teacher_hook(j) is not None and j.notes["teacher_outputs"]["reason"] == "set to cached"
    monkeypatch.setenv(SOURCE_ENV, "sometimes")
    with pytest.raises(ParameterError, match="KDBENCH_TEACHER_OUTPUTS must be auto, cached or live"):
        teacher_hook(j)



@pytest.mark.parametrize(("vocab", "dtype"), [(1000, np.uint16), (70_000, np.int32)])
def test_kept_ids_round_trip_as_lists_and_bitmaps(vocab: int, dtype) -> None:
    """Positions of every size, from one id to the whole vocabulary: each reads back as the set it stored, and the
    probabilities follow their ids (reordered by the same permutation)."""
    rng = np.random.default_rng(0)
    counts = np.array([1, 3, 60, 63, 64, 200, vocab // 8, vocab // 4, vocab])
    ids = np.concatenate([rng.permutation(vocab)[:c] for c in counts])
    probs = rng.random(len(ids))
    encoding = IdEncoding(vocab, np.dtype(dtype))
    raw, order = encoding.encode(ids, counts)
    assert len(raw) == encoding.bytes(counts)
    back = encoding.decode(np.frombuffer(raw.tobytes(), np.uint8), counts)
    ends = np.cumsum(counts)
    for lo, hi in zip(ends - counts, ends, strict=True):
        assert sorted(back[lo:hi]) == sorted(ids[lo:hi])
        written = dict(zip(ids[lo:hi].tolist(), probs[lo:hi].tolist(), strict=True))
        assert [written[i] for i in back[lo:hi].tolist()] == probs[order][lo:hi].tolist()
    bitmap_at = [min(dtype().itemsize * c, -(-vocab // 8)) for c in counts]
    assert len(raw) == sum(bitmap_at)
