"""Sampling and the data strategies: which sequences each step's loss is computed on, and who produced them.

Models are "rigged" (tests/distill_helpers.py) to emit one known token with probability ~1, so the tokens of a
sampled sequence say which model sampled it.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from kdbench.core.cache import ArtifactCache
from kdbench.core.types import Encoded
from kdbench.distill import strategies
from kdbench.distill.sampling import PolicyPart, sample
from kdbench.distill.strategies import (
    GOLD,
    REPLAY,
    STUDENT,
    AdaptiveSGO,
    MixedSampling,
    ReplayBuffer,
    split_off,
    teacher_samples,
)
from kdbench.training.loop import batches
from tests.distill_helpers import (
    MAX_TOTAL,
    data,
    job,
    prompts,
    responses,
    rig,
    single_thread,  # noqa: F401 - autouse fixture
    tiny_model,
    token,
    tokenizer,
)

CPU = torch.device("cpu")


def gold_batch(j, start: int = 0, n: int = 4) -> dict[str, torch.Tensor]:
    (idx, batch), *_ = batches(j.data[start : start + n], n, j.pad_id, None)
    batch["index"] = torch.tensor([start + i for i in idx])
    return batch


def draw(policy, prompt_list, seed: int, budget: int = 6) -> list[tuple[int, ...]]:
    tok = tokenizer()
    return sample(
        policy, prompt_list, generator=torch.Generator().manual_seed(seed), max_new_tokens=budget,
        eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, device=CPU,
    )


# --- sampling ----------------------------------------------------------------------------------------------


def test_sampling_is_reproducible_from_the_generator_alone() -> None:
    model = tiny_model(5)
    prompt_list = [e.prompt_ids for e in data(6)]
    torch.manual_seed(123)  # the global RNG must not matter
    first = draw([PolicyPart(model)], prompt_list, seed=1)
    torch.manual_seed(456)
    assert draw([PolicyPart(model)], prompt_list, seed=1) == first
    assert draw([PolicyPart(model)], prompt_list, seed=2) != first
    assert model.training  # restored (a fresh model is in train mode)


def test_sampling_stops_at_eos_and_respects_each_budget() -> None:
    eos = tokenizer().eos_token_id
    stopper = rig(tiny_model(5), eos)
    assert draw([PolicyPart(stopper)], [data(1)[0].prompt_ids], seed=0) == [(eos,)]
    x = token("name")
    talker = rig(tiny_model(5), x)
    out = sample(
        [PolicyPart(talker)], [e.prompt_ids for e in data(3)], generator=torch.Generator().manual_seed(0),
        max_new_tokens=[1, 3, 5], eos_id=eos, pad_id=tokenizer().pad_token_id, device=CPU,
    )
    assert out == [(x,), (x,) * 3, (x,) * 5]


def test_rows_of_different_lengths_each_fill_the_model_to_its_limit() -> None:
    x = token("name")
    j = job(student=rig(tiny_model(5), x))
    prompt_list = [e.prompt_ids for e in j.data]
    assert len({len(p) for p in prompt_list}) > 1
    budgets = [j.new_token_budget(len(p)) for p in prompt_list]
    limit = j.student.config.n_positions
    out = sample(
        [PolicyPart(j.student)], prompt_list, generator=torch.Generator().manual_seed(0), max_new_tokens=budgets,
        eos_id=j.eos_id, pad_id=j.pad_id, device=CPU,
    )
    assert [len(p) + len(r) for p, r in zip(prompt_list, out, strict=True)] == [min(limit, MAX_TOTAL)] * len(out)


def test_mixture_samples_each_part_in_proportion_and_applies_its_transform() -> None:
    x, y = token("name"), token("phone")
    student, teacher = rig(tiny_model(5), x), rig(tiny_model(6), y)
    out = draw([PolicyPart(student, 0.8), PolicyPart(teacher, 0.2)], [e.prompt_ids for e in data(16)], 0, 10)
    tokens = [t for r in out for t in r]
    assert set(tokens) == {x, y}
    assert 0.1 < tokens.count(y) / len(tokens) < 0.3  # 160 draws, p = 0.2
    flip = torch.zeros(len(tokenizer()))
    flip[x] = 200.0  # a "defense" that makes the teacher say x instead of y
    out = draw([PolicyPart(teacher, 1.0, transform=lambda logits: logits + flip)], [data(1)[0].prompt_ids], 0)
    assert set(out[0]) == {x}


def test_a_policy_must_be_a_probability_mixture() -> None:
    model = tiny_model(5)
    with pytest.raises(ValueError, match="sum to 1"):
        draw([PolicyPart(model, 0.5), PolicyPart(model, 0.2)], [data(1)[0].prompt_ids], 0)


# --- replay buffer and validation split ---------------------------------------------------------------------


def test_replay_buffer_keeps_the_newest_and_draws_without_replacement() -> None:
    buffer = ReplayBuffer(torch.Generator().manual_seed(0), capacity=3)
    items = [Encoded((1,), (i,)) for i in range(5)]
    buffer.add(items)
    assert len(buffer) == 3 and list(buffer.items) == items[2:]
    drawn = buffer.sample(3)
    assert sorted(e.response_ids for e in drawn) == [(2,), (3,), (4,)]
    assert len(buffer.sample(10)) == 3


def test_split_off_holds_out_a_seeded_fraction() -> None:
    items = data(16)
    train, held = split_off(items, 0.25, torch.Generator().manual_seed(0))
    assert len(held) == 4 and len(train) == 12 and set(train).isdisjoint(held)
    assert split_off(items, 0.25, torch.Generator().manual_seed(0)) == (train, held)
    assert len(split_off(items, 0.001, torch.Generator().manual_seed(0))[1]) == 1


# --- GKD / ImitKD -----------------------------------------------------------------------------------------------


def test_mixed_sampling_trains_on_student_samples_from_the_replay_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    x = token("name")
    j = job(student=rig(tiny_model(2), x))
    strategy = MixedSampling(j, student_fraction=0.5, max_new_tokens=5)
    seen: list[tuple[str, dict[str, torch.Tensor]]] = []
    strategy.observers.append(lambda step, source, batch: seen.append((source, batch)))
    draws = iter([0.3, 0.7, 0.49])
    monkeypatch.setattr(strategies, "_uniform", lambda generator: next(draws))
    for step, start in enumerate((0, 4, 8)):
        strategy(step, gold_batch(j, start))
    assert [source for source, _ in seen] == [STUDENT, GOLD, STUDENT]
    for source, batch in seen:
        if source == STUDENT:  # the student's answers: its token, after prompts of the distillation data
            assert all(r == [x] * 5 for r in responses(batch))
            assert "index" not in batch
            assert all(tuple(p) in {e.prompt_ids for e in j.data} for p in prompts(batch))
        else:
            assert responses(batch) == [list(e.response_ids) for e in j.data[4:8]]
    assert len(strategy.buffer) == 8  # both student steps added their 4 answers; the second drew from all 8
    assert {tuple(p) for p in prompts(seen[2][1])} <= {e.prompt_ids for e in j.data[:4] + j.data[8:12]}


def test_imitkd_fraction_one_always_samples() -> None:
    x = token("name")
    j = job(student=rig(tiny_model(2), x))
    strategy = MixedSampling(j, student_fraction=1.0, max_new_tokens=3)
    sources = [strategy.choose(step, gold_batch(j, 4 * step))[0] for step in range(4)]
    assert sources == [STUDENT] * 4


# --- DistiLLM's adaptive schedule ---------------------------------------------------------------------------


def sgo(j, total: int = 10, steps_per_epoch: int = 5, **kw) -> AdaptiveSGO:
    return AdaptiveSGO(j, data(16)[12:], total, steps_per_epoch, max_new_tokens=4, **kw)


def test_adaptive_threshold_rises_by_a_step_on_each_validation_rise(monkeypatch: pytest.MonkeyPatch) -> None:
    j = job(student=rig(tiny_model(2), token("name")))
    strategy = sgo(j, total=25, steps_per_epoch=5)
    losses = iter([2.0, 2.05, 2.11, 2.15, 2.3])  # before training, then after each epoch
    monkeypatch.setattr(strategy, "validation_loss", lambda: next(losses))
    monkeypatch.setattr(strategies, "_uniform", lambda generator: 0.99)  # always ground truth
    for step in range(25):
        strategy(step, gold_batch(j))
    # 2.05 < 2.0 + 0.1: no change; 2.11 >= 2.0 + 0.1: +0.1 (reference 2.11); 2.15 < 2.21; then 2.3 >= 2.21: +0.1
    assert [round(t, 6) for _, _, t in strategy.state.history] == [0.0, 0.0, 0.1, 0.1, 0.2]
    assert [s for s, _, _ in strategy.state.history] == [0, 5, 10, 15, 20]
    rising = itertools.count(3.0)
    monkeypatch.setattr(strategy, "validation_loss", lambda: next(rising))
    for _ in range(20):  # capped at 1
        strategy._update_threshold(0)
    assert strategy.state.threshold == 1.0


def test_adaptive_schedule_picks_fresh_replay_or_gold_by_the_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    x = token("name")
    j = job(student=rig(tiny_model(2), x))
    strategy = sgo(j, total=10, steps_per_epoch=100, capacity=12)  # three batches of 4 fill the buffer
    monkeypatch.setattr(strategy, "validation_loss", lambda: 1.0)
    strategy.state.threshold = 0.5
    # at step 4 of 10: fresh below 0.5 * (1 - 5/10) = 0.25, replay below 0.5, gold above. DistiLLM samples fresh
    # instead of replaying until the buffer is full: the first two 0.3 draws (buffer at 0, then 8 of 12) sample.
    expected = [(0.3, STUDENT), (0.2, STUDENT), (0.3, STUDENT), (0.3, REPLAY), (0.6, GOLD), (0.1, STUDENT),
                (0.45, REPLAY)]
    sizes = []
    for r, want in expected:
        monkeypatch.setattr(strategies, "_uniform", lambda generator, r=r: r)
        source, batch = strategy.choose(4, gold_batch(j, 0))
        assert source == want, r
        sizes.append(len(strategy.buffer))
        if source in (STUDENT, REPLAY):
            assert all(resp == [x] * 4 for resp in responses(batch))
    assert sizes == [4, 8, 12, 12, 12, 12, 12]


def test_adaptive_replay_draws_sample_fresh_until_the_default_capacity(monkeypatch: pytest.MonkeyPatch) -> None:
    """[D]'s rule with its capacity of 1,000: a replay draw never replays while the buffer holds fewer."""
    j = job(student=rig(tiny_model(2), token("name")))
    strategy = sgo(j, total=10, steps_per_epoch=100)
    assert strategy.buffer.items.maxlen == 1000
    monkeypatch.setattr(strategy, "validation_loss", lambda: 1.0)
    monkeypatch.setattr(strategies, "_uniform", lambda generator: 0.3)
    strategy.state.threshold = 0.5
    assert [strategy.choose(4, gold_batch(j, 0))[0] for _ in range(5)] == [STUDENT] * 5
    assert len(strategy.buffer) == 20


def test_adaptive_schedule_starts_as_pure_ground_truth() -> None:
    j = job()
    strategy = sgo(j)
    assert {strategy.choose(step, gold_batch(j))[0] for step in range(3)} == {GOLD}
    assert strategy.state.reference_loss is not None and strategy.state.threshold == 0.0


# --- SeqKD's teacher samples ----------------------------------------------------------------------------------


def test_teacher_samples_are_drawn_once_and_cached(tmp_path) -> None:
    y = token("phone")
    cache = ArtifactCache(tmp_path)
    first = teacher_samples(job(teacher=rig(tiny_model(1), y), cache=cache, teacher_key="t"), max_new_tokens=4)
    assert [e.response_ids for e in first] == [(y,) * 4] * 16
    assert [e.prompt_ids for e in first] == [e.prompt_ids for e in data()]
    assert len(cache.builds) == 1 and cache.builds[0].startswith("teacher_samples/") and not cache.hits
    # a second run with another (unrigged) teacher object under the same key reads the cache: same samples
    again = teacher_samples(job(teacher=tiny_model(9), cache=cache, teacher_key="t"), max_new_tokens=4)
    assert again == first and len(cache.hits) == 1
