"""The teacher's outputs on fixed (off-policy) sequences, computed once and cached as top-k log-probabilities.

Why: a KD epoch that runs the teacher at every step costs a teacher forward pass per student step, every epoch;
ground-truth and SeqKD sequences never change, so the teacher's distributions on them are computed once per
(teacher, sequences, k, output defenses) and every later epoch, distiller and run reads them from the cache
(:class:`kdbench.core.cache.ArtifactCache`), which makes a KD epoch cost about as much as a fine-tuning epoch.

What is stored: at every position that predicts a response token (the positions a loss is averaged over), the
k most likely tokens and their log-probabilities, after the teacher-output defenses (defenses act on the full
logits, before the truncation, exactly as they do for live logits). The KD losses read them as
:class:`kdbench.training.objectives.TopKLogProbs`, which spreads the unknown tail mass uniformly over the other tokens.

Choice of k, measured with ``benchmarks/kd_throughput.py`` on the default task (synthetic-pii: 300 public
examples, 10,390 response positions, vocabulary 2,000, the trained gpt2-tiny-teacher; |loss(top-k) − loss(full
logits)| per batch of 16, max over batches, for a fresh student / after one KD epoch):

    k     teacher mass left out (mean, max)   fkl               jsd (λ 0.9)       srkl (α 0.1)
    64    28.5%, 82%                          3.3e-4 / 8.0e-2   2.3e-2 / 1.6e-2   3.4e-1 / 2.3e-1
    512   7.4%, 46%                           2.0e-5 / 3.5e-3   1.2e-3 / 9.0e-4   2.3e-2 / 1.7e-2

The tiny teacher is far from peaked, so k = 512 (``DEFAULT_TOP_K``): 8 bytes per position and k, 42 MB for the
default task; a KD epoch on it ran at 0.96x the throughput of a fine-tuning epoch (0.61x with the teacher run
live). Reverse-type losses (srkl) are the most sensitive, as they weigh the teacher's tail by the student's
mass. Peaked teachers need less: :meth:`TeacherOutputs.tail_mass` says what a given k leaves out.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from kdbench.core.params import params_dict
from kdbench.core.types import Encoded
from kdbench.distill.job import INDICES, LOGPROBS, DistillJob
from kdbench.training.loop import collate, to_device
from kdbench.training.memory import run_in_chunks
from kdbench.training.objectives import TopKLogProbs

DEFAULT_TOP_K = 512
TOLERANCE = 2.5e-2
"""|top-k loss − full-logit loss| (nats per token) at k = ``DEFAULT_TOP_K``: above the largest gap measured on the
default task (2.3e-2, srkl, fresh student); fkl and jsd stay below 3.5e-3 there."""
STAGE_VERSION = 1
_FILE = "teacher_outputs.safetensors"


@dataclass(frozen=True)
class TeacherOutputs:
    """Teacher top-k log-probs at the response positions of a list of sequences, flattened: example i owns rows
    ``offsets[i]:offsets[i + 1]``, one per response token, the first at position ``starts[i]`` of
    ``logits[:, :-1]`` (the prompt's last token, which predicts the first response token).

    Called as a ``prepare`` hook, it attaches the rows of ``batch["index"]`` to the batch, aligned with
    ``logits[:, :-1]``; :meth:`kdbench.distill.job.DistillJob.teacher_targets` then reads them instead of running
    the teacher. A batch without ``index`` (e.g. student samples) is left alone: its teacher runs live.
    """

    indices: Tensor  # [rows, k] int32
    logprobs: Tensor  # [rows, k] float32
    offsets: Tensor  # [n + 1] int64
    starts: Tensor  # [n] int64

    def __call__(self, step: int, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if "index" not in batch:
            return batch
        n_rows, width = batch["input_ids"].shape
        k = self.indices.shape[1]
        indices = torch.arange(k).expand(n_rows, width - 1, k).clone()  # placeholders where no loss is taken
        logprobs = torch.full((n_rows, width - 1, k), -float(torch.log(torch.tensor(float(k)))))
        responses = (batch["labels"][:, 1:] != -100).sum(dim=1).tolist()
        for row, example in enumerate(batch["index"].tolist()):
            lo, hi = int(self.offsets[example]), int(self.offsets[example + 1])
            if hi - lo != responses[row]:
                raise ValueError(
                    f"Cached teacher outputs hold {hi - lo} response positions for example {example}, but the "
                    f"batch has {responses[row]}: they were computed for other sequences."
                )
            start = int(self.starts[example])
            indices[row, start : start + hi - lo] = self.indices[lo:hi].long()
            logprobs[row, start : start + hi - lo] = self.logprobs[lo:hi]
        return {**batch, INDICES: indices, LOGPROBS: logprobs}

    def tail_mass(self) -> Tensor:
        """Per position, the teacher's probability outside the stored top k: how much the cache had to guess (its
        total-variation distance to the true distribution is at most this)."""
        return (1.0 - self.logprobs.double().exp().sum(dim=-1)).clamp(min=0.0).float()

    def save(self, directory: Path) -> None:
        tensors = {"indices": self.indices, "logprobs": self.logprobs, "offsets": self.offsets, "starts": self.starts}
        save_file({name: t.contiguous() for name, t in tensors.items()}, str(directory / _FILE))

    @classmethod
    def load(cls, directory: Path) -> TeacherOutputs:
        return cls(**load_file(str(directory / _FILE)))


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


def teacher_outputs(
    job: DistillJob, data: Sequence[Encoded] | None = None, k: int = DEFAULT_TOP_K, batch_size: int = 32
) -> TeacherOutputs:
    """The teacher's top-k outputs on ``data`` (default ``job.data``), from the cache when present.

    Cached under ``teacher_outputs/`` keyed by the teacher's key, the sequences' hash, k and the output
    defenses; computed in memory, uncached, when the job has no cache or no teacher key to name the teacher by.
    """
    data = job.data if data is None else data
    if k < 1:
        raise ValueError(f"top-k must be at least 1, got {k}")
    if job.cache is None or not job.teacher_key:
        return compute_teacher_outputs(job, data, k, batch_size)
    spec = {
        "stage": "teacher_outputs",
        "version": STAGE_VERSION,
        "teacher": job.teacher_key,
        "sequences": sequences_hash(data),
        "top_k": k,
        "defenses": output_defenses(job),
    }
    path = job.cache.get_or_build(
        "teacher_outputs", spec, lambda tmp: compute_teacher_outputs(job, data, k, batch_size).save(tmp)
    )
    return TeacherOutputs.load(path)


def compute_teacher_outputs(
    job: DistillJob, data: Sequence[Encoded], k: int, batch_size: int = 32
) -> TeacherOutputs:
    """One batched teacher pass over ``data`` (through ``job.teacher_logits``, so defenses apply first)."""
    job.teacher.to(job.device)
    rows: list[tuple[Tensor, Tensor]] = [(torch.empty(0), torch.empty(0))] * len(data)
    order = sorted(range(len(data)), key=lambda i: len(data[i].input_ids))  # similar lengths: less padding
    label = f"teacher outputs (top-{k})"
    with job.reporter.task(label, len(data)) as advance:

        def run(positions: list[int]) -> None:
            chunk = [order[p] for p in positions]
            batch = to_device(collate([data[i] for i in chunk], job.pad_id), job.device)
            logits = job.teacher_logits(batch)[:, :-1]
            top = TopKLogProbs.from_logits(logits, min(k, logits.shape[-1]))
            found = []
            for row, i in enumerate(chunk):
                start, n = len(data[i].prompt_ids) - 1, len(data[i].response_ids)
                found.append((
                    top.indices[row, start : start + n].to("cpu", torch.int32),
                    top.logprobs[row, start : start + n].to("cpu", torch.float32),
                ))
            for i, pair in zip(chunk, found, strict=True):  # stored only once the whole chunk is computed
                rows[i] = pair
            advance(len(chunk))

        # memory-aware: a chunk that does not fit is redone in halves (the outputs are per row)
        run_in_chunks(len(order), batch_size, run, device=job.device, label=label, reporter=job.reporter)
    lengths = torch.tensor([len(e.response_ids) for e in data], dtype=torch.long)
    return TeacherOutputs(
        indices=torch.cat([r[0] for r in rows]),
        logprobs=torch.cat([r[1] for r in rows]),
        offsets=torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
        starts=torch.tensor([len(e.prompt_ids) - 1 for e in data], dtype=torch.long),
    )
