"""Memory-aware batch sizes: a batch that does not fit on the device is split, not fatal.

A grid runs the same recipe on a laptop CPU, a 24 GB card and an 80 GB card. Rather than asking the user to
guess a batch size per model, every batched pass starts at the recipe's size and, when the device runs out of
memory, halves the number of rows it puts through the model at once:

- training keeps the recipe's batch and accumulates gradients over micro-batches, each weighted by its share
  of the batch's response tokens, so the update equals the full-batch update of a token-mean loss (up to
  float summation order);
- forward-only passes (token statistics, generation) just take smaller chunks; their outputs do not depend on
  the chunking.

The smaller size is kept for the rest of the pass, so the failed attempt is paid once.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from kdbench.core.errors import KdbenchError
from kdbench.core.progress import NullReporter, Reporter


class OutOfMemory(KdbenchError):
    """Even a single example does not fit, or a pass that cannot be split ran out of memory."""


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's ``OutOfMemoryError``, and the RuntimeError other backends (MPS, older drivers) raise."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def release(device: torch.device) -> None:
    """Give the failed attempt's memory back before the retry (its tensors are gone once the except ends)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass
class RowBudget:
    """How many rows one forward pass may take. ``rows=None`` means the whole batch; ``tokens`` also caps
    rows × width (the padded batch's positions), so activation memory stays that of a fixed number of positions
    whatever the batch size and sequence length."""

    label: str
    rows: int | None = None
    reporter: Reporter | None = None
    tokens: int | None = None

    def fit(self, n: int, width: int | None = None) -> int:
        cap = n if self.rows is None else self.rows
        if self.tokens is not None and width:
            cap = min(cap, self.tokens // width)
        return max(1, min(n, cap))

    def shrink(self, tried: int, device: torch.device, hint: str = "") -> None:
        """Halve after an out-of-memory at ``tried`` rows; refuse below one row."""
        if tried <= 1:
            raise OutOfMemory(
                f"{self.label}: a single example does not fit in {device.type} memory. Use a smaller model, "
                "shorter sequences (the task's models.max_total_tokens), LoRA, or a device with more memory."
                + (f" {hint}" if hint else "")
            )
        self.rows = tried // 2
        (self.reporter or NullReporter()).log(
            f"{self.label}: out of {device.type} memory at {tried} rows; continuing with {self.rows} rows at a time"
        )


# A CPU has no out-of-memory signal to halve on (the OS swaps or kills the process), and its throughput does not
# grow with rows per pass: measured on the embedded teacher (4 layers, 16 rows of up to 256 tokens), 8-row pieces
# cut peak training memory by ~400 MB at equal speed. So on a CPU a training forward pass takes at most this many
# positions unless the user sets ``--micro-batch`` (the update is the same up to float summation order).
CPU_TOKENS_PER_FORWARD = 2048


def default_tokens_per_forward(device: torch.device, micro_batch: int | None) -> int | None:
    """The positions cap of a training pass: :data:`CPU_TOKENS_PER_FORWARD` on a CPU when the user gave no
    micro-batch, none otherwise (accelerators keep whole batches and halve on out-of-memory)."""
    return CPU_TOKENS_PER_FORWARD if device.type == "cpu" and micro_batch is None else None


def _within_positions(start: int, end: int, width: Callable[[int], int], tokens: int) -> int:
    """The end of the longest chunk from ``start`` (before ``end``, at least one item) whose rows × widest item
    stays within ``tokens``."""
    stop, widest = start + 1, width(start)
    while stop < end and (stop - start + 1) * max(widest, width(stop)) <= tokens:
        widest = max(widest, width(stop))
        stop += 1
    return stop


def split_rows(batch: dict[str, Any], rows: int) -> list[dict[str, Any]]:
    """``batch`` cut into consecutive pieces of at most ``rows`` rows. Every tensor whose first dimension is
    the batch's is cut; anything else (scalars, settings) is shared by all pieces."""
    n = int(batch["input_ids"].shape[0])
    if rows >= n:
        return [batch]
    pieces = []
    for start in range(0, n, rows):
        pieces.append({
            key: value[start : start + rows]
            if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == n
            else value
            for key, value in batch.items()
        })
    return pieces


def token_shares(pieces: Sequence[dict[str, Any]], ignore_index: int) -> list[float]:
    """Each piece's share of the batch's response tokens (its rows' share when there are no labels): the
    weights that make accumulated token-mean losses equal the whole batch's token-mean loss."""
    if all("labels" in p for p in pieces):
        counts = [float((p["labels"][:, 1:] != ignore_index).sum()) for p in pieces]
    else:
        counts = [float(p["input_ids"].shape[0]) for p in pieces]
    total = sum(counts)
    if total == 0:
        return [1.0 / len(pieces)] * len(pieces)
    return [c / total for c in counts]


def fits(work: Callable[..., object], *args: Any) -> bool:
    """Run ``work(*args)``; False if the device ran out of memory (any other error propagates). The caller
    frees memory after this returns: by then the traceback no longer pins the failed attempt's tensors."""
    try:
        work(*args)
    except Exception as error:  # only out-of-memory is handled; the rest re-raises
        if not is_out_of_memory(error):
            raise
        return False
    return True


def run_in_chunks(
    n: int,
    batch_size: int,
    process: Callable[[list[int]], None],
    *,
    device: torch.device,
    label: str,
    reporter: Reporter | None = None,
    width: Callable[[int], int] | None = None,
) -> None:
    """Call ``process(positions)`` on consecutive chunks of ``range(n)``, halving the chunk on out-of-memory.

    ``width(position)``: the padded length that item needs; given it, a chunk on a CPU also holds at most
    :data:`CPU_TOKENS_PER_FORWARD` positions (rows × its widest item), so a pass over long sequences at the end of
    a length-sorted order does not peak above the rest. ``process`` must only store its results once it has
    computed all of them (a failed chunk is redone).
    """
    budget = RowBudget(label, batch_size, reporter, tokens=default_tokens_per_forward(device, None))
    start = 0
    while start < n:
        end = min(n, start + budget.fit(batch_size))
        if width is not None and budget.tokens is not None:
            end = _within_positions(start, end, width, budget.tokens)
        chunk = list(range(start, end))
        if fits(process, chunk):
            start += len(chunk)
        else:
            release(device)
            budget.shrink(len(chunk), device)
