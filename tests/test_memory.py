"""Memory-aware batch sizes (kdbench.training.memory): micro-batches give the full-batch update, and an out-of-memory
error halves the rows per pass instead of ending the run.

There is no GPU here, so a device running out of memory is produced the way CUDA reports it: a forward
pre-hook on the real (tiny) model raises ``torch.OutOfMemoryError`` whenever a pass holds more rows than the
"device" fits. Everything else (model, loss, optimiser, loop) is the real thing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kdbench.core.progress import NullReporter
from kdbench.core.types import TrainConfig
from kdbench.scoring.tokenstats import compute_token_stats
from kdbench.training import memory
from kdbench.training.loop import IGNORE, LoopSettings, collate, generate, sft_loss, train_loop
from kdbench.training.memory import OutOfMemory, is_out_of_memory, split_rows, token_shares
from tests.distill_helpers import data, single_thread, tiny_model  # noqa: F401 - single_thread is autouse

CPU = torch.device("cpu")
CONFIG = TrainConfig(lr=1e-3, epochs=2, batch_size=8)


class Device:
    """A pretend device memory that holds at most ``rows`` rows per forward pass; records what it saw."""

    def __init__(self, model: Any, rows: int) -> None:
        self.rows, self.seen = rows, []
        self.handle = model.register_forward_pre_hook(self.check, with_kwargs=True)

    def check(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.seen.append(int(ids.shape[0]))
        if ids.shape[0] > self.rows:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {ids.shape[0]} rows (simulated)")


class Log(NullReporter):
    """A reporter that keeps what the loop logs."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def log(self, message: str) -> None:
        self.messages.append(message)


@pytest.fixture
def examples() -> Iterator[list[Any]]:
    yield data(16)


def without_dropout(model: Any) -> Any:
    """Dropout draws its masks per pass, so a batch cut in pieces gets other masks: the update is equal in
    distribution only. Without dropout it must be equal, up to float summation order."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def trained(examples: list[Any], **options: Any) -> tuple[dict[str, torch.Tensor], list[float], Any]:
    model = without_dropout(tiny_model(5))
    device = Device(model, options.pop("fits", 10**6))
    losses = train_loop(model, examples, sft_loss, CONFIG, LoopSettings(seed=0, pad_id=0, device=CPU, **options))
    device.handle.remove()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, losses, device


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=2e-6, rtol=1e-5, msg=name)


def test_the_data_has_responses_of_different_lengths(examples: list[Any]) -> None:
    # otherwise weighting micro-batches by rows or by tokens would be indistinguishable
    assert len({len(e.response_ids) for e in examples}) > 3


def test_micro_batches_give_the_full_batch_update(examples: list[Any]) -> None:
    whole, whole_losses, device = trained(examples)
    assert set(device.seen) == {8}
    micro, micro_losses, device = trained(examples, micro_batch=3)
    assert set(device.seen) == {3, 2}  # 8 rows as 3 + 3 + 2
    assert_same_weights(whole, micro)
    torch.testing.assert_close(torch.tensor(micro_losses), torch.tensor(whole_losses), atol=1e-6, rtol=1e-6)


def test_weighting_by_rows_instead_of_tokens_would_differ(examples: list[Any]) -> None:
    """The check above can fail: pieces weighted by their share of rows give a measurably different update."""
    batch = collate(examples[:8], pad_id=0)
    pieces = split_rows(batch, 3)
    by_tokens = token_shares(pieces, IGNORE)
    by_rows = [p["input_ids"].shape[0] / 8 for p in pieces]
    assert sum(by_tokens) == pytest.approx(1.0)
    assert max(abs(a - b) for a, b in zip(by_tokens, by_rows, strict=True)) > 0.01
    model = tiny_model(5)
    model.eval()
    with torch.no_grad():
        full = float(sft_loss(model, batch))
        tokens_error = abs(float(sum(w * sft_loss(model, p) for w, p in zip(by_tokens, pieces, strict=True))) - full)
        rows_error = abs(float(sum(w * sft_loss(model, p) for w, p in zip(by_rows, pieces, strict=True))) - full)
    assert tokens_error < 1e-5
    assert rows_error > 1e-4 and rows_error > 20 * tokens_error


def test_out_of_memory_halves_the_rows_and_keeps_the_update(examples: list[Any]) -> None:
    whole, whole_losses, _ = trained(examples)
    log = Log()
    fitted, losses, device = trained(examples, fits=2, reporter=log)
    assert max(device.seen) == 8 and device.seen[-1] == 2  # tried the whole batch, then 4, then settled on 2
    assert device.seen.count(8) == 1 and device.seen.count(4) == 1  # the smaller size is kept, not re-probed
    assert [m.split(": ", 1)[1] for m in log.messages] == [
        "out of cpu memory at 8 rows; continuing with 4 rows at a time",
        "out of cpu memory at 4 rows; continuing with 2 rows at a time",
    ]
    assert_same_weights(whole, fitted)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(whole_losses), atol=1e-6, rtol=1e-6)


def test_one_row_that_does_not_fit_is_a_clear_error(examples: list[Any]) -> None:
    with pytest.raises(OutOfMemory, match=r"a single example does not fit in cpu memory.*max_total_tokens"):
        trained(examples, fits=0, label="training teacher")


def test_an_unsplittable_loop_says_what_to_lower(examples: list[Any]) -> None:
    """With an optimizer hook (DP-SGD's per-sample clipping) the batch is never cut."""
    with pytest.raises(OutOfMemory, match=r"batch of 8 rows.*cannot split it.*batch_size"):
        trained(examples, fits=4, optimizer_hook=lambda m, o, s: (m, o, s))


def test_other_errors_are_not_taken_for_out_of_memory(examples: list[Any]) -> None:
    def broken(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        train_loop(tiny_model(5), examples, broken, CONFIG, LoopSettings(seed=0, pad_id=0, device=CPU))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_token_statistics_are_unchanged_by_out_of_memory(examples: list[Any]) -> None:
    model = tiny_model(5)
    reference = compute_token_stats(model, examples, pad_id=0, device=CPU, batch_size=16)
    device = Device(model, rows=3)
    fitted = compute_token_stats(model, examples, pad_id=0, device=CPU, batch_size=16)
    assert max(device.seen) == 16 and device.seen[-1] <= 2  # 16 → 8 → 4 → 2
    assert sum(n for n in device.seen if n <= 3) == len(examples)  # every row computed once, none twice
    assert (fitted.offsets == reference.offsets).all()
    for name, values in reference.values.items():
        torch.testing.assert_close(torch.from_numpy(fitted.values[name]), torch.from_numpy(values), atol=1e-6,
                                   rtol=1e-5)


def test_generation_is_unchanged_by_out_of_memory(examples: list[Any]) -> None:
    model = tiny_model(5)
    prompts = [e.prompt_ids for e in examples]
    options = {"max_new_tokens": 6, "pad_id": 0, "eos_id": 1, "device": CPU, "batch_size": 16}
    reference = generate(model, prompts, **options)
    device = Device(model, rows=5)
    assert generate(model, prompts, **options) == reference
    assert device.seen[:2] == [16, 8] and max(device.seen[2:]) == 4  # 16 and 8 failed; 4 rows at a time


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("kd", {}),  # cached top-k teacher outputs travel with the rows they belong to
        ("gkd", {"max_new_tokens": 4}),  # on-policy samples drawn once per batch, before the cut
        ("minillm", {"max_new_tokens": 4, "rollouts": 8, "iterations": 4, "init_epochs": 0}),  # whitened per batch
    ],
)
def test_a_distiller_gives_the_same_student_when_its_batches_are_cut(
    name: str, params: dict[str, Any], tmp_path: Any
) -> None:
    from dataclasses import replace

    from kdbench.core.cache import ArtifactCache
    from kdbench.core.registry import get_registry
    from tests.distill_helpers import job

    info = get_registry().get("distillers", name)

    def student(micro_batch: int | None) -> dict[str, torch.Tensor]:
        j = replace(
            job(teacher=tiny_model(1), student=without_dropout(tiny_model(2)), batch_size=4,
                cache=ArtifactCache(tmp_path / "cache"), teacher_key="teacher"),
            micro_batch=micro_batch,
        )
        model = info.cls(info.cls.Params(**params)).distill(j)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    assert_same_weights(student(None), student(1))


def test_teacher_outputs_are_unchanged_by_out_of_memory(tmp_path: Path) -> None:
    from kdbench.distill.teacher_outputs import compute_teacher_outputs
    from tests.distill_helpers import job

    j = job(teacher=tiny_model(1))
    (tmp_path / "reference").mkdir()
    (tmp_path / "fitted").mkdir()
    compute_teacher_outputs(j, j.data, tmp_path / "reference", k=16, batch_size=16)
    device = Device(j.teacher, rows=3)
    compute_teacher_outputs(j, j.data, tmp_path / "fitted", k=16, batch_size=16)
    assert device.seen[:3] == [16, 8, 4] and max(device.seen[3:]) == 2
    # the chunks that ran out of memory wrote nothing: the files are the same entries, in the same order
    for name in ("counts.npy", "firsts.npy", "offsets.npy", "indices.bin", "meta.json"):
        assert (tmp_path / "fitted" / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name
    fitted = np.fromfile(tmp_path / "fitted" / "probs.bin", np.float16).astype(np.float32)
    reference = np.fromfile(tmp_path / "reference" / "probs.bin", np.float16).astype(np.float32)
    np.testing.assert_allclose(fitted, reference, atol=1e-3, rtol=2.0**-10)  # batch size may move an ulp


def test_an_unsplittable_loop_says_it_ignores_the_micro_batch(examples: list[Any]) -> None:
    log = Log()
    trained(examples, micro_batch=2, optimizer_hook=lambda m, o, s: (m, o, s), reporter=log)
    assert len(log.messages) == 1 and "micro-batches are off" in log.messages[0]


def test_a_cpu_pass_takes_at_most_the_positions_budget(examples: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU, with no micro-batch given, a training pass holds at most CPU_TOKENS_PER_FORWARD padded positions
    (rows × width): the update is still the whole batch's. A micro-batch the user gives replaces the budget."""
    monkeypatch.setattr(memory, "CPU_TOKENS_PER_FORWARD", 10**6)
    whole, whole_losses, device = trained(examples)
    assert set(device.seen) == {8}
    budget = 60
    monkeypatch.setattr(memory, "CPU_TOKENS_PER_FORWARD", budget)
    widths = [collate(examples[i : i + 8], pad_id=0)["input_ids"].shape[1] for i in (0, 8)]
    assert all(budget // w < 8 for w in widths)  # the budget does cut these batches
    capped, capped_losses, device = trained(examples)
    assert max(device.seen) <= budget // min(widths) and max(device.seen) < 8
    assert_same_weights(whole, capped)
    torch.testing.assert_close(torch.tensor(capped_losses), torch.tensor(whole_losses), atol=1e-6, rtol=1e-6)
    _, _, device = trained(examples, micro_batch=8)
    assert set(device.seen) == {8}


def test_forward_chunks_on_a_cpu_hold_at_most_the_positions_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks grow in order while rows × widest width stays within the budget (an item wider than it goes alone)."""
    monkeypatch.setattr(memory, "CPU_TOKENS_PER_FORWARD", 12)
    widths = [2, 3, 3, 4, 5, 7, 13, 1, 1]
    seen: list[list[int]] = []
    memory.run_in_chunks(len(widths), 4, seen.append, device=CPU, label="t", width=widths.__getitem__)
    # by hand: [2,3,3,4]→4 rows×4=16>12, so [2,3,3] (9); [4,5] (10; +7 → 21); [7] (+13 → 26); [13] alone; [1,1]
    assert seen == [[0, 1, 2], [3, 4], [5], [6], [7, 8]]
    seen.clear()
    memory.run_in_chunks(len(widths), 4, seen.append, device=CPU, label="t")  # no widths: rows only
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
