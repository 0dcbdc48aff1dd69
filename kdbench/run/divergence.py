"""How far a student is from its teacher: the reverse KL on held-out prompts, before and after training.

A cheap diagnostic for every distiller and the no-KD baseline: did distillation move the student toward the
teacher at all, and further than fine-tuning on the gold answers did? The reverse KL KL(q‖p) = Σ_v q (log q −
log p) (q the student, p the undefended teacher) is averaged over the response positions of the ``eval`` split's
examples (no model trains on them), teacher-forced on their reference responses. "Before" is the student's
initialisation (the student base with the run's seed), "after" the trained model. Cached per model pair.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from kdbench.core.data import Example, content_hash
from kdbench.core.types import TrainedModel
from kdbench.models import hub as models
from kdbench.run.context import RunContext
from kdbench.training.loop import batches, shifted, to_device
from kdbench.training.objectives import rkl

VERSION = 1
BATCH = 16


@torch.no_grad()
def mean_reverse_kl(student: Any, teacher: Any, ctx: RunContext, samples: Sequence[Example]) -> float:
    """Token-weighted mean of KL(student ‖ teacher) over the response positions of ``samples``."""
    total, tokens = 0.0, 0
    modes = student.training, teacher.training
    student.eval()
    teacher.eval()
    try:
        for _, batch in batches(ctx.encode(samples), BATCH, ctx.tokenizer.pad_token_id, None):
            batch = to_device(batch, ctx.device)
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            _, mask = shifted(batch)
            n = int(mask.sum())
            value = rkl(student(**inputs).logits[:, :-1], teacher(**inputs).logits[:, :-1].float(), mask)
            total += float(value) * n
            tokens += n
    finally:
        student.train(modes[0])
        teacher.train(modes[1])
    return total / max(tokens, 1)


def teacher_rkl(ctx: RunContext, teacher: TrainedModel, trained: TrainedModel) -> dict[str, float]:
    """{"before": KL of the student's initialisation, "after": KL of ``trained``} to ``teacher`` on the eval
    split's first ``n_eval`` examples (the utility samples)."""
    samples = ctx.splits.roles["eval"][: ctx.task.evaluation.n_eval]
    return {"before": _cached(ctx, teacher, None, samples), "after": _cached(ctx, teacher, trained, samples)}


def _cached(ctx: RunContext, teacher: TrainedModel, trained: TrainedModel | None, samples: Sequence[Example]) -> float:
    ref = trained.ref if trained is not None else ctx.student_ref
    model_id = trained.key if trained is not None else {"init": models.model_identity(ref), "seed": ctx.seed}
    spec = {"stage": "teacher_rkl", "version": VERSION, "teacher": teacher.key, "model": model_id,
            "samples": content_hash(samples), "lengths": [ctx.task.models.max_prompt_tokens,
                                                         ctx.task.models.max_total_tokens]}

    def build(tmp: Path) -> None:
        model: Any
        if trained is not None:
            model = ctx.model(trained)
        else:
            model = models.init_model(ref, ctx.tokenizer, ctx.seed, ctx.trust_remote_code, dtype=ctx.dtype(ref))
            model.to(ctx.device)
        value = mean_reverse_kl(model, ctx.model(teacher), ctx, samples)
        (tmp / "rkl.json").write_text(json.dumps({"rkl": value}))

    with ctx.timed("teacher reverse KL"):
        path = ctx.cache.get_or_build("teacher_rkl", spec, build)
    return float(json.loads((path / "rkl.json").read_text())["rkl"])
