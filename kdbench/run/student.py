"""A cell's student: distilled from the teacher under a defense stack, each defense hook at its stage, and the
defense context (the teacher's attack scores through the run's cached token statistics) the defenses read."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdbench.core.cache import spec_key
from kdbench.core.data import Example, content_hash
from kdbench.core.errors import KdbenchError
from kdbench.core.params import params_dict
from kdbench.core.types import TrainConfig, TrainedModel
from kdbench.defense.base import REPORT_FILE, DefenseContext
from kdbench.defense.stack import DefenseStack
from kdbench.distill.job import DistillJob
from kdbench.distill.teacher_outputs import requested_source
from kdbench.models import hub as models
from kdbench.models.hub import model_config
from kdbench.run.context import RunContext
from kdbench.run.host import RunHost, attack_scorer
from kdbench.scoring.host import encoded_hash

NOTES_FILE = "distill_notes.json"
"""Beside a student: per student (one per shard), what its distillation chose and measured (``DistillJob.notes``,
e.g. live or cached teacher outputs and why); read back into run.json, also when the student comes from the cache."""


def distill_notes(student: TrainedModel) -> list[dict[str, Any]]:
    saved = student.path / NOTES_FILE
    notes: list[dict[str, Any]] = json.loads(saved.read_text()) if saved.exists() else []
    return notes


def build_student(
    ctx: RunContext,
    teacher: TrainedModel,
    distiller: Any,
    distiller_label: str,
    defenses: DefenseStack,
    defense_label: str,
    attack_samples: tuple[Sequence[Example], Sequence[Example]] | None = None,
) -> TrainedModel:
    """Distil a student from ``teacher`` with ``distiller``, under ``defenses``: each hook at its stage
    (kdbench.defense.base), one student per shard a defense asks for, the defenses' report saved beside it.
    ``attack_samples`` (members, non-members) set the thresholds of defenses that use the teacher's attack."""
    config = ctx.training("student")
    data = ctx.distillation_data()
    if defenses.checks:
        defenses.check(model_config(ctx.student_ref, ctx.trust_remote_code), distiller.name)
    spec = ctx._base_spec("student", ctx.student_ref, data, config)
    spec.update(
        teacher=teacher.key,
        distiller={"name": distiller.name, "params": params_dict(distiller.params)},
        defenses=[{"name": d.name, "params": params_dict(d.params)} for d in defenses.defenses],
        # auto: measured per cell on this machine (the choice is in the student's notes and run.json); pinning
        # cached or live gives students that are identical across machines
        teacher_outputs=requested_source(),
    )
    lm_coef = float(getattr(distiller.params, "lm_coef", 0.0))
    pretrain = ctx.pretraining_data() if lm_coef > 0 else []
    if pretrain:
        spec["pretrain"] = encoded_hash(pretrain)
    if defenses.uses_attack_samples:
        if attack_samples is None:
            raise KdbenchError(f"Defense stack {defense_label!r} sets thresholds on members and non-members; "
                               "pass attack_samples.")
        spec["attack_samples"] = [content_hash(samples) for samples in attack_samples]

    def build(tmp: Path) -> None:
        defenses.prepare(defense_context(ctx, teacher, config, data, attack_samples))
        shards = defenses.shards(defenses.select_data(data))
        students, notes = [], []
        for index, shard in enumerate(shards):
            defenses.start_student(index, len(shard))
            part = f" student {index + 1}/{len(shards)}" if len(shards) > 1 else ""
            job = DistillJob(
                teacher=ctx.model(teacher),
                student=defenses.modify_student(models.init_model(
                    ctx.student_ref, ctx.tokenizer, ctx.seed, ctx.trust_remote_code,
                    dtype=ctx.dtype(ctx.student_ref),
                )),
                tokenizer=ctx.tokenizer,
                data=ctx.encode(shard),
                config=config,
                seed=ctx.seed,
                device=ctx.device,
                teacher_key=teacher.key,
                cache=ctx.cache,
                defenses=defenses,
                reporter=ctx.reporter,
                label=f"distilling {distiller_label} [{defense_label}]{part}",
                max_total_tokens=ctx.task.models.max_total_tokens,
                micro_batch=ctx.micro_batch,
                lm_coef=lm_coef,
                pretrain=pretrain,
            )
            students.append(distiller.distill(job))
            defenses.finish_student(index, students[-1])
            notes.append(job.notes)
        models.save_model(defenses.postprocess(students), ctx.tokenizer, tmp)
        (tmp / REPORT_FILE).write_text(json.dumps(defenses.report(), indent=1, sort_keys=True))
        (tmp / NOTES_FILE).write_text(json.dumps(notes, indent=1, sort_keys=True))

    with ctx.timed(f"student {distiller_label} [{defense_label}]"):
        path = ctx.cache.get_or_build("model", spec, build)
    return TrainedModel("student", f"{distiller_label} [{defense_label}]", spec_key(spec), path, ctx.student_ref)

def defense_context(
    ctx: RunContext,
    teacher: TrainedModel,
    config: TrainConfig,
    data: Sequence[Example],
    attack_samples: tuple[Sequence[Example], Sequence[Example]] | None,
) -> DefenseContext:
    """What the defenses may read (kdbench.defense.base.DefenseContext); the teacher's attack scores come from
    the same cached token statistics the evaluation uses."""
    members, nonmembers = attack_samples if attack_samples is not None else ((), ())
    return DefenseContext(
        teacher=teacher, teacher_model=ctx.model(teacher), tokenizer=ctx.tokenizer, encode=ctx.encode,
        teacher_scores=attack_scorer(RunHost(ctx), teacher), config=config, distillation=data, members=members,
        nonmembers=nonmembers, seed=ctx.seed, device=ctx.device,
    )
