"""The teacher's outputs on fixed (off-policy) sequences, computed once, stored on disk and read per batch.

Why: a KD epoch that runs the teacher at every step costs a teacher forward pass per student step, every epoch;
ground-truth and SeqKD sequences never change, so the teacher's distributions on them can be computed once per
(teacher, sequences, truncation, output defenses) and every later epoch, distiller and run reads them from the
cache (:class:`kdbench.core.cache.ArtifactCache`). For a small teacher a forward pass costs less than reading
its outputs back, so :func:`teacher_hook` measures both on one batch and picks, per cell (see "Live or cached").

What is stored: at every position that predicts a response token (the positions a loss is averaged over), the
teacher's most likely tokens and their probabilities, after the teacher-output defenses (defenses act on the full
logits, before the truncation, exactly as they do for live logits). The KD losses read them as
:class:`kdbench.training.objectives.TopKLogProbs`, which spreads the dropped tail mass uniformly over the other
tokens.

Adaptive truncation: each position keeps the smallest k whose dropped mass is at most ``tail_bound`` (ε,
``TAIL_BOUND`` = 1e-3), and at most ``k`` (``DEFAULT_TOP_K`` = 512) tokens: a peaked position keeps a handful, a
flat one 512 (the whole distribution when the vocabulary has at most 512 tokens). A position's stored
distribution is within total variation max(ε, its mass beyond the top 512) of the teacher's (``tail_mass``); the
KD loss error bound and the measurements are in docs/running.md, "Teacher outputs".

Storage (written in pieces as the teacher pass goes, never held whole): ``probs.bin`` (float16 probabilities:
relative error ≤ 2^-11, i.e. at most 2^-11·Σ p·|log q| nats on a cross-entropy, measured ≤ 1.6e-5 on the KD
losses; log-probabilities in float16 would err by |log p|·2^-11 instead) and ``indices.bin``, each position's
token ids as a list (uint16 when the vocabulary has at most 65,536 tokens, else int32) or, when it is smaller, as
a bitmap over the vocabulary (⌈V/8⌉ bytes; its probabilities then in token-id order): a flat position of a small
vocabulary keeps hundreds of tokens, and 512 ids of a 2,000-token vocabulary cost 1,024 bytes as a list and 250
as a bitmap. Per position ``counts.npy`` (uint16; the encoding follows from the count), per example ``firsts.npy``
(its first entry) and ``first_bytes.npy`` (its first byte of ``indices.bin``; its positions are contiguous in
both), ``offsets.npy`` and ``starts.npy``. A flat position of a 2,000-token vocabulary costs 1,276 bytes against
the 4,096 of the float32 + int32 top-512 it replaced; one of GPT-2's 50,257, 2,050. A batch reads only its
examples' bytes (:func:`numpy.fromfile` at an offset, no memory map, so reading an epoch does not grow the
resident set).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kdbench.core.errors import ParameterError
from kdbench.core.params import params_dict
from kdbench.core.types import Encoded
from kdbench.distill.job import COUNTS, INDICES, LOGPROBS, DistillJob
from kdbench.training.loop import collate, to_device
from kdbench.training.memory import run_in_chunks
from kdbench.training.objectives import TopKLogProbs

DEFAULT_TOP_K = 512
"""The most tokens kept per position (all of a vocabulary of at most this many)."""
TAIL_BOUND = 1e-3
"""ε: a position stops keeping tokens once the mass it leaves out is at most this."""
TOLERANCE = 2.5e-2
"""|cached loss − full-logit loss| (nats per token) at the defaults, for fkl, jsd and srkl on the default task:
above the largest gap measured there (2.3e-2, srkl; docs/running.md)."""
STAGE_VERSION = 4
SOURCE_ENV = "KDBENCH_TEACHER_OUTPUTS"
"""Force a source for every cell: ``cached`` or ``live`` (default ``auto``: measured, see :func:`teacher_hook`)."""
_META = "meta.json"


@dataclass(frozen=True)
class TeacherOutputs:
    """Teacher outputs stored in ``directory`` at the response positions of a list of sequences: example i owns
    positions ``offsets[i]:offsets[i + 1]``, one per response token, the first at position ``starts[i]`` of
    ``logits[:, :-1]`` (the prompt's last token, which predicts the first response token); position r keeps
    ``counts[r]`` entries of ``indices.bin``/``probs.bin``, example i's contiguous from entry ``firsts[i]``.

    Called as a ``prepare`` hook, it reads the entries of the examples in ``batch["index"]`` and attaches them,
    aligned with ``logits[:, :-1]``; :meth:`kdbench.distill.job.DistillJob.teacher_targets` then uses them instead
    of running the teacher. A batch without ``index`` (e.g. student samples) is left alone: its teacher runs live.
    """

    directory: Path
    _keep: Any = field(default=None, compare=False, repr=False)  # a temporary directory, removed with this

    @functools.cached_property
    def meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = json.loads((self.directory / _META).read_text())
        return meta

    def _array(self, name: str) -> np.ndarray:
        """A small index array (2 bytes per position at most), memory-mapped once and paged in as read."""
        arrays: dict[str, np.ndarray] = self.__dict__.setdefault("_arrays", {})
        if name not in arrays:
            arrays[name] = np.load(self.directory / name, mmap_mode="r")
        return arrays[name]

    @property
    def positions(self) -> int:
        return int(self.meta["positions"])

    @property
    def entries(self) -> int:
        return int(self.meta["entries"])

    def read(self, example: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Example ``example``'s (token ids, probabilities, per-position counts), read from disk."""
        offsets = self._array("offsets.npy")
        lo, hi = int(offsets[example]), int(offsets[example + 1])
        if hi == lo:
            return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
        counts = np.array(self._array("counts.npy")[lo:hi], dtype=np.int64)
        first = int(self._array("firsts.npy")[example])
        first_byte = int(self._array("first_bytes.npy")[example])
        meta = self.meta
        encoding = IdEncoding(int(meta["vocab"]), np.dtype(meta["index_dtype"]))
        raw = _read(self.directory / "indices.bin", np.dtype(np.uint8), first_byte, encoding.bytes(counts))
        ids = encoding.decode(raw, counts)
        probs = _read(self.directory / "probs.bin", np.dtype(np.float16), first, int(counts.sum()))
        return ids, probs, counts

    def __call__(self, step: int, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if "index" not in batch:
            return batch
        n_rows, width = batch["input_ids"].shape
        responses = (batch["labels"][:, 1:] != -100).sum(dim=1).tolist()
        starts = self._array("starts.npy")
        examples = batch["index"].tolist()
        found = [self.read(example) for example in examples]
        k = max([int(c.max()) for _, _, c in found if len(c)] or [1])
        indices = torch.arange(k).expand(n_rows, width - 1, k).clone()  # placeholders where no loss is taken
        logprobs = torch.full((n_rows, width - 1, k), -math.log(k))
        counts = torch.full((n_rows, width - 1), k, dtype=torch.long)
        for row, (example, (ids, probs, count)) in enumerate(zip(examples, found, strict=True)):
            if len(count) != responses[row]:
                raise ValueError(
                    f"Cached teacher outputs hold {len(count)} response positions for example {example}, but the "
                    f"batch has {responses[row]}: they were computed for other sequences."
                )
            if not len(count):
                continue
            # slot j of position r holds entry min(j, count_r − 1): short positions repeat their last entry
            first = np.concatenate([[0], np.cumsum(count)[:-1]])
            slots = first[:, None] + np.minimum(np.arange(k)[None, :], count[:, None] - 1)
            start = int(starts[example])
            span = slice(start, start + len(count))
            indices[row, span] = torch.from_numpy(ids[slots].astype(np.int64))
            logprobs[row, span] = torch.from_numpy(np.log(np.maximum(probs[slots].astype(np.float32), 2.0**-24)))
            counts[row, span] = torch.from_numpy(count)
        return {**batch, INDICES: indices, LOGPROBS: logprobs, COUNTS: counts}

    def tail_mass(self) -> Tensor:
        """Per position, the teacher's probability outside the stored tokens: how much the cache had to guess (its
        total-variation distance to the true distribution is at most this)."""
        out = []
        for example in range(len(self._array("starts.npy"))):
            _, probs, counts = self.read(example)
            if len(counts):
                sums = np.add.reduceat(probs.astype(np.float64), np.concatenate([[0], np.cumsum(counts)[:-1]]))
                out.append(np.clip(1.0 - sums, 0.0, None))
        return torch.from_numpy(np.concatenate(out) if out else np.zeros(0)).float()

    def kept(self) -> Tensor:
        """Per position, how many tokens are stored."""
        return torch.from_numpy(np.array(self._array("counts.npy"), dtype=np.int64))

    def bytes(self) -> int:
        return sum(f.stat().st_size for f in self.directory.iterdir() if f.is_file())


def _read(path: Path, dtype: np.dtype, first: int, n: int) -> np.ndarray:
    return np.fromfile(path, dtype=dtype, count=n, offset=first * dtype.itemsize)


def sequences_hash(data: Sequence[Encoded]) -> str:
    """SHA-256 over the token ids (prompt and response kept apart): what the outputs were computed on."""
    digest = hashlib.sha256()
    for example in data:
        digest.update(json.dumps([example.prompt_ids, example.response_ids]).encode())
    return digest.hexdigest()


def output_defenses(job: DistillJob) -> list[dict[str, Any]]:
    """Name and parameters of the defenses that transform the teacher's outputs: part of every cache key of
    something derived from teacher outputs, so a defended teacher never reuses undefended artifacts."""
    return [
        {"name": d.name, "params": params_dict(d.params)}
        for d in job.defenses.defenses
        if "teacher_outputs" in getattr(d, "stages", ())
    ]


def _spec(job: DistillJob, data: Sequence[Encoded], k: int, tail_bound: float) -> dict[str, Any]:
    return {
        "stage": "teacher_outputs",
        "version": STAGE_VERSION,
        "teacher": job.teacher_key,
        "sequences": sequences_hash(data),
        "max_k": k,
        "tail_bound": tail_bound,
        "defenses": output_defenses(job),
    }


def teacher_outputs(
    job: DistillJob,
    data: Sequence[Encoded] | None = None,
    k: int = DEFAULT_TOP_K,
    batch_size: int = 32,
    tail_bound: float = TAIL_BOUND,
) -> TeacherOutputs:
    """The teacher's truncated outputs on ``data`` (default ``job.data``), from the cache when present.

    Cached under ``teacher_outputs/`` keyed by the teacher's key, the sequences' hash, the truncation (``k``:
    cap per position; ``tail_bound``) and the output defenses; written to a temporary directory
    (removed with the returned object) when the job has no cache or no teacher key to name the teacher by.
    """
    data = job.data if data is None else data
    if k < 1:
        raise ValueError(f"top-k must be at least 1, got {k}")
    if not 0.0 <= tail_bound < 1.0:
        raise ValueError(f"tail_bound must lie in [0, 1), got {tail_bound}")
    if job.cache is None or not job.teacher_key:
        tmp = tempfile.TemporaryDirectory(prefix="kdbench-teacher-outputs-")
        compute_teacher_outputs(job, data, Path(tmp.name), k, batch_size, tail_bound)
        return TeacherOutputs(Path(tmp.name), tmp)
    path = job.cache.get_or_build(
        "teacher_outputs", _spec(job, data, k, tail_bound),
        lambda tmp: compute_teacher_outputs(job, data, tmp, k, batch_size, tail_bound),
    )
    return TeacherOutputs(path)


def truncate(logits: Tensor, k: int, tail_bound: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per position of ``logits`` [rows, vocab]: (token ids [rows, m], probabilities [rows, m], kept [rows]),
    sorted by probability; position r keeps the smallest count whose dropped mass is ≤ ``tail_bound``, at most
    ``k``."""
    cap = min(k, logits.shape[-1])
    probs, ids = torch.softmax(logits.float(), dim=-1).topk(cap, dim=-1)
    before = torch.cumsum(probs.double(), dim=-1) - probs.double()  # mass of the tokens ranked above each
    kept = (before < 1.0 - tail_bound).sum(dim=-1).clamp(1, cap)
    return ids, probs, kept


def compute_teacher_outputs(
    job: DistillJob, data: Sequence[Encoded], directory: Path, k: int = DEFAULT_TOP_K, batch_size: int = 32,
    tail_bound: float = TAIL_BOUND,
) -> None:
    """One batched teacher pass over ``data`` (through ``job.teacher_logits``, so defenses apply first), written
    to ``directory`` chunk by chunk: memory holds one chunk's logits, never the whole outputs."""
    job.teacher.to(job.device)
    lengths = [len(e.response_ids) for e in data]
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
    np.save(directory / "offsets.npy", offsets)
    np.save(directory / "starts.npy", np.array([len(e.prompt_ids) - 1 for e in data], dtype=np.int64))
    cap = max(1, min(k, 1 << 31))
    counts = np.lib.format.open_memmap(
        directory / "counts.npy", mode="w+", dtype=np.uint16 if cap < 1 << 16 else np.int32, shape=(int(offsets[-1]),)
    )
    firsts = np.lib.format.open_memmap(directory / "firsts.npy", mode="w+", dtype=np.int64, shape=(len(data),))
    first_bytes = np.lib.format.open_memmap(
        directory / "first_bytes.npy", mode="w+", dtype=np.int64, shape=(len(data),)
    )
    vocab: list[int] = []
    encoding: list[IdEncoding] = []
    written, written_bytes = [0], [0]
    order = sorted(range(len(data)), key=lambda i: len(data[i].input_ids))  # similar lengths: less padding
    label = f"teacher outputs (tail ≤ {tail_bound})"
    with (
        job.reporter.task(label, len(data)) as advance,
        open(directory / "indices.bin", "wb") as id_file,
        open(directory / "probs.bin", "wb") as prob_file,
    ):

        def run(positions: list[int]) -> None:
            chunk = [order[p] for p in positions]
            batch = to_device(collate([data[i] for i in chunk], job.pad_id), job.device)
            logits = job.teacher_logits(batch)[:, :-1]
            if not vocab:
                vocab.append(logits.shape[-1])
                encoding.append(IdEncoding(vocab[0], np.dtype(_index_dtype(vocab[0]))))
            found = []
            for row, i in enumerate(chunk):
                start, n = len(data[i].prompt_ids) - 1, len(data[i].response_ids)
                ids, probs, kept = truncate(logits[row, start : start + n], k, tail_bound)
                keep = torch.arange(ids.shape[-1], device=ids.device)[None, :] < kept[:, None]
                found.append((ids[keep].cpu().numpy(), probs[keep].cpu().numpy(), kept.cpu().numpy()))
            # written only once the whole chunk is computed (a chunk that runs out of memory is redone)
            for i, (ids_i, probs_i, kept_i) in zip(chunk, found, strict=True):
                raw, stored = encoding[0].encode(ids_i, kept_i)
                id_file.write(raw.tobytes())
                prob_file.write(probs_i[stored].astype(np.float16).tobytes())
                lo = int(offsets[i])
                counts[lo : lo + len(kept_i)] = kept_i
                firsts[i] = written[0]
                first_bytes[i] = written_bytes[0]
                written[0] += int(kept_i.sum())
                written_bytes[0] += len(raw)
            advance(len(chunk))

        # memory-aware: a chunk that does not fit is redone in halves (the outputs are per row)
        run_in_chunks(len(order), batch_size, run, device=job.device, label=label, reporter=job.reporter,
                      width=lambda p: len(data[order[p]].input_ids))
    counts.flush()
    firsts.flush()
    first_bytes.flush()
    meta = {
        "positions": int(offsets[-1]), "entries": written[0], "vocab": vocab[0] if vocab else 0,
        "index_dtype": np.dtype(_index_dtype(vocab[0] if vocab else 0)).name, "value_dtype": "float16",
        "index_bytes": written_bytes[0], "max_k": k, "tail_bound": tail_bound,
    }
    (directory / _META).write_text(json.dumps(meta))


def _index_dtype(vocab: int) -> type[np.integer[Any]]:
    return np.uint16 if vocab <= 1 << 16 else np.int32


@dataclass(frozen=True)
class IdEncoding:
    """How a position's kept token ids are stored in ``indices.bin``: a list of ``dtype`` ids (in probability
    order), or a bitmap of ⌈vocab/8⌉ bytes (ids ascending) when that is smaller. Which one follows from the
    position's count, so nothing but the counts says how to read it back."""

    vocab: int
    dtype: np.dtype[Any]

    @property
    def bitmap_bytes(self) -> int:
        return -(-self.vocab // 8)

    def is_bitmap(self, counts: np.ndarray) -> np.ndarray:
        return self.bitmap_bytes < self.dtype.itemsize * counts

    def bytes(self, counts: np.ndarray) -> int:
        """Bytes the positions with these ``counts`` take in ``indices.bin``."""
        return int(np.where(self.is_bitmap(counts), self.bitmap_bytes, self.dtype.itemsize * counts).sum())

    def encode(self, ids: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(bytes, order) for one example: ``ids`` holds each position's ``counts[r]`` kept ids back to back (in
        probability order); ``order`` permutes the entries into storage order (ids ascending at a bitmap
        position), for the probabilities to follow."""
        bitmap = self.is_bitmap(counts)
        position = np.repeat(np.arange(len(counts)), counts)
        in_bitmap = bitmap[position]
        # storage order: by position; within a bitmap position by id, within a list position as given
        order = np.lexsort((np.where(in_bitmap, ids, 0), position))
        ids = ids[order]
        lengths = np.where(bitmap, self.bitmap_bytes, self.dtype.itemsize * counts)
        raw = np.empty(int(lengths.sum()), np.uint8)
        byte_in_bitmap = np.repeat(bitmap, lengths)
        if bitmap.any():
            rows = np.cumsum(bitmap)[position[in_bitmap]] - 1  # each entry's row among the bitmap positions
            bits = np.zeros((int(bitmap.sum()), 8 * self.bitmap_bytes), bool)
            bits[rows, ids[in_bitmap]] = True
            raw[byte_in_bitmap] = np.packbits(bits, axis=1).ravel()
        raw[~byte_in_bitmap] = ids[~in_bitmap].astype(self.dtype).view(np.uint8)
        return raw, order

    def decode(self, raw: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """The kept ids (int64, in storage order) of positions with these ``counts`` from their bytes ``raw``."""
        bitmap = self.is_bitmap(counts)
        lengths = np.where(bitmap, self.bitmap_bytes, self.dtype.itemsize * counts)
        byte_in_bitmap = np.repeat(bitmap, lengths)
        in_bitmap = np.repeat(bitmap, counts)
        ids = np.empty(int(counts.sum()), np.int64)
        if bitmap.any():
            bits = np.unpackbits(raw[byte_in_bitmap].reshape(-1, self.bitmap_bytes), axis=1)
            ids[in_bitmap] = np.nonzero(bits)[1]  # row-major: positions in order, ids ascending
        ids[~in_bitmap] = raw[~byte_in_bitmap].view(self.dtype)
        return ids


# --- live or cached ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceChoice:
    """Where a cell's teacher distributions come from, and why: the seconds per batch measured for each."""

    source: str  # "cached" or "live"
    reason: str
    teacher_forward_s: float | None = None
    cached_read_s: float | None = None
    cache_bytes: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def teacher_hook(
    job: DistillJob,
    data: Sequence[Encoded] | None = None,
    k: int = DEFAULT_TOP_K,
    batch_size: int = 32,
    tail_bound: float = TAIL_BOUND,
    source: str | None = None,
) -> TeacherOutputs | None:
    """The ``prepare`` hook that supplies the teacher on ``data``'s batches: cached outputs, or None for live.

    ``source`` (default ``$KDBENCH_TEACHER_OUTPUTS``, else ``auto``): ``cached``, ``live``, or ``auto``, which
    times one batch of ``job.config.batch_size`` examples both ways (the teacher's forward pass with the
    log-softmax the loss takes on it, against reading the batch's cached outputs and expanding them to the
    vocabulary) and goes live when the forward pass costs less. The choice and the timings go to
    ``job.notes["teacher_outputs"]`` (and from there to ``run.json``). Either way the losses agree within the
    truncation's ``TOLERANCE`` (live has no truncation).
    """
    data = job.data if data is None else data
    source = requested_source(source)
    if source == "auto" and data:
        choice = _measure(job, data, k, batch_size, tail_bound)
    else:
        choice = SourceChoice("live" if source == "live" else "cached", f"set to {source}" if data else "no data")
    outputs = None
    if choice.source == "cached" and data:
        outputs = teacher_outputs(job, data, k, batch_size, tail_bound)
        choice = SourceChoice(**{**choice.as_dict(), "cache_bytes": outputs.bytes()})
    job.notes["teacher_outputs"] = choice.as_dict()
    return outputs


def requested_source(source: str | None = None) -> str:
    """The teacher-output source asked for: ``source``, else ``$KDBENCH_TEACHER_OUTPUTS``, else ``auto``. Part of
    the student's cache key (kdbench.run.student), so a student trained from cached outputs is never returned when
    live ones are asked for, or the other way round."""
    source = source or os.environ.get(SOURCE_ENV) or "auto"
    if source not in ("auto", "cached", "live"):
        raise ParameterError(f"{SOURCE_ENV} must be auto, cached or live, got {source!r}: unset it for auto.")
    return source


def _measure(job: DistillJob, data: Sequence[Encoded], k: int, batch_size: int, tail_bound: float) -> SourceChoice:
    probe = list(range(min(len(data), job.config.batch_size)))
    batch = collate([data[i] for i in probe], job.pad_id)
    batch["index"] = torch.tensor(probe)
    job.teacher.to(job.device)
    vocab = int(job.teacher_logits(to_device(batch, job.device)).shape[-1])  # also warms the teacher up

    def live() -> None:
        torch.log_softmax(job.teacher_logits(to_device(batch, job.device)), dim=-1)

    with tempfile.TemporaryDirectory(prefix="kdbench-probe-") as tmp:
        # the probe's own outputs, stored as the full cache stores them (data order kept: index i is example i)
        compute_teacher_outputs(job, [data[i] for i in probe], Path(tmp), k, batch_size, tail_bound)
        stored = TeacherOutputs(Path(tmp))

        def cached() -> None:
            hooked = stored(0, batch)
            TopKLogProbs(hooked[INDICES], hooked[LOGPROBS], hooked[COUNTS]).log_probs(vocab)

        forward, read = _best_time(live), _best_time(cached)
    if forward <= read:
        reason = (f"a teacher forward pass ({forward:.3g} s/batch) costs no more than reading cached outputs "
                  f"({read:.3g} s)")
        return SourceChoice("live", reason, forward, read)
    reason = f"reading cached outputs ({read:.3g} s/batch) costs less than a teacher forward pass ({forward:.3g} s)"
    return SourceChoice("cached", reason, forward, read)


def _best_time(work: Any, repeats: int = 2) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            work()
        best = min(best, time.perf_counter() - start)
    return best
