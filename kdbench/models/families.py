"""Model families as in [Z] (METHODS.md §3): teacher and student checkpoints by name, with the study's training
hyper-parameters (which are for pretrained models; the tiny built-in default uses its task's own)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kdbench.core.errors import UnknownNameError
from kdbench.core.types import TrainConfig


@dataclass(frozen=True)
class Family:
    teacher: str
    students: dict[str, str]
    training: dict[str, TrainConfig]
    teacher_lora: bool = False  # [Z] fine-tunes the 7B teacher with LoRA
    notes: str = ""
    default_size: str = "small"
    lora: dict[str, float] = field(default_factory=lambda: {"r": 16, "alpha": 32, "dropout": 0.05})
    distillers: dict[str, dict[str, str]] = field(default_factory=dict)  # parameter defaults; the user's win


_GPT2_TRAINING = {
    "teacher": TrainConfig(lr=5e-5, epochs=5, batch_size=8),
    "baseline": TrainConfig(lr=5e-5, epochs=10, batch_size=8),
    "student": TrainConfig(lr=5e-5, epochs=10, batch_size=8),
}

# [Z]'s per-distiller settings (its GPT-2 scripts): learning rates, the language-modelling term on pre-training text
# (lm_coef 1 for ImitKD, DistiLLM and MiniLLM on GPT-2; for all six on OPT) and MiniLLM's 5,000 iterations.
# MiniLLM: a constant rate after 100 warm-up steps ([Z]'s minillm.sh), not the cosine the others use.
_Z_RATES = {"kd": "5e-5", "seqkd": "5e-4", "gkd": "5e-4", "imitkd": "5e-4", "distillm": "1e-4", "minillm": "5e-6"}
_GPT2_DISTILLERS = {
    name: {"lr": lr, **({"lm_coef": "1"} if name in ("imitkd", "distillm", "minillm") else {})}
    for name, lr in _Z_RATES.items()
}
_MINILLM_RUN = {"iterations": "5000", "schedule": "constant", "warmup_steps": "100"}
_GPT2_DISTILLERS["minillm"].update(_MINILLM_RUN)

# [Z]'s OPT scripts (scripts/model_family_6k/opt/*.sh): every off-policy and on-policy distiller at 5e-5, MiniLLM at
# a constant 5e-6 after 100 warm-up steps (no --scheduler-name: constant_trm), the LM term on all six; the teacher
# 5 epochs at 5e-5, batch 4.
_OPT_DISTILLERS = {name: {"lr": "5e-5", "lm_coef": "1"} for name in _Z_RATES}
_OPT_DISTILLERS["minillm"] = {"lr": "5e-6", "lm_coef": "1", **_MINILLM_RUN}
_OPT_TRAINING = {**_GPT2_TRAINING, "teacher": TrainConfig(lr=5e-5, epochs=5, batch_size=4)}

# [Z]'s OpenLLaMA scripts (scripts/model_family_6k/llama/*.sh): kd at 1e-5 and seqkd at 5e-4 with kd_ratio 0.5 and
# no LM term; gkd, imitkd, distillm at 5e-4 with the LM term; MiniLLM at 5e-6 (cosine_trm down to lr-min 5e-6:
# constant) after 100 warm-up steps, 5,000 iterations, with the LM term. The 7B teacher: LoRA, 20 epochs at 5e-4,
# batch 8. LoRA r 16, alpha 64, dropout 0.1 (DistiLLM's argument defaults; no script overrides them). Not carried
# over: [Z] also puts LoRA on the 3B student, and its LLaMA distillm ("srkl-aesop") never samples from the student
# (the type names neither "mixed" nor "adaptive"), so it is off-policy srkl there; kdbench's distillm stays adaptive.
_LLAMA_DISTILLERS = {
    "kd": {"lr": "1e-5", "kd_ratio": "0.5"},
    "seqkd": {"lr": "5e-4", "kd_ratio": "0.5"},
    "gkd": {"lr": "5e-4", "lm_coef": "1"},
    "imitkd": {"lr": "5e-4", "lm_coef": "1"},
    "distillm": {"lr": "5e-4", "lm_coef": "1"},
    "minillm": {"lr": "5e-6", "lm_coef": "1", **_MINILLM_RUN},
}
_LLAMA_TRAINING = {
    "teacher": TrainConfig(lr=5e-4, epochs=20, batch_size=8),
    "baseline": TrainConfig(lr=5e-4, epochs=10, batch_size=8),
    "student": TrainConfig(lr=5e-4, epochs=10, batch_size=8),
}

FAMILIES: dict[str, Family] = {
    "gpt2": Family(
        teacher="gpt2-xl",
        students={"small": "gpt2", "medium": "gpt2-medium", "large": "gpt2-large"},
        training=_GPT2_TRAINING,
        distillers=_GPT2_DISTILLERS,
    ),
    "opt": Family(
        teacher="facebook/opt-2.7b",
        students={"small": "facebook/opt-125m", "medium": "facebook/opt-350m", "large": "facebook/opt-1.3b"},
        training=_OPT_TRAINING,
        distillers=_OPT_DISTILLERS,
    ),
    "llama": Family(
        teacher="openlm-research/open_llama_7b",
        students={"small": "openlm-research/open_llama_3b"},
        training=_LLAMA_TRAINING,
        teacher_lora=True,
        lora={"r": 16, "alpha": 64, "dropout": 0.1},
        distillers=_LLAMA_DISTILLERS,
        notes="[Z]'s 'LLaMA-2' arm is OpenLLaMA 7B (teacher, LoRA) and 3B (student).",
    ),
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise UnknownNameError("model family", name, FAMILIES)
    return FAMILIES[name]


def student_for(family: Family, size: str) -> str:
    if size not in family.students:
        raise UnknownNameError("student size", size, family.students, hint=f"(family teacher: {family.teacher})")
    return family.students[size]
