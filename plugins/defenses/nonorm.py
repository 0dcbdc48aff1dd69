"""``nonorm``: every normalisation layer of the student (LayerNorm, RMSNorm) becomes y = x ⊙ γ + β with γ = 1,
β = 0 at initialisation: the affine part stays trainable, the mean/variance normalisation is gone ([C]'s
revision, METHODS.md §7). Applies to any architecture whose norms are ``nn.LayerNorm``/``nn.RMSNorm`` or
classes named ``*LayerNorm``/``*RMSNorm`` (GPT-2, OPT, Llama, GPT-NeoX, ...); a student without one is refused."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from kdbench.api import DefenseBase, KdbenchError, Register, hookimpl


class Affine(nn.Module):
    """What is left of a normalisation layer without its normalisation: an elementwise scale and shift."""

    def __init__(self, shape: tuple[int, ...], like: torch.Tensor | None = None) -> None:
        super().__init__()
        options: dict[str, Any] = {} if like is None else {"dtype": like.dtype, "device": like.device}
        self.weight = nn.Parameter(torch.ones(shape, **options))
        self.bias = nn.Parameter(torch.zeros(shape, **options))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight + self.bias


def is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or type(module).__name__.endswith(("LayerNorm", "RMSNorm"))


def _shape(module: nn.Module) -> tuple[int, ...]:
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor):
        return tuple(weight.shape)
    shape = getattr(module, "normalized_shape", None)
    if shape is None:
        raise KdbenchError(f"nonorm: cannot tell the width of the normalisation layer {type(module).__name__}.")
    return tuple(shape) if isinstance(shape, (tuple, list)) else (int(shape),)


class NoNorm(DefenseBase):
    name = "nonorm"
    description = "Every LayerNorm/RMSNorm becomes x*γ+β (γ=1, β=0 at init): no normalisation ([C])."
    stages: ClassVar[frozenset[str]] = frozenset({"student_architecture"})

    def modify_student(self, model: Any) -> Any:
        norms = [(name, module) for name, module in model.named_modules() if is_norm(module)]
        if not norms:
            raise KdbenchError(f"nonorm: the {type(model).__name__} student has no LayerNorm or RMSNorm to remove.")
        for name, module in norms:
            parent_name, _, attribute = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            weight = getattr(module, "weight", None)
            setattr(parent, attribute, Affine(_shape(module), weight if isinstance(weight, torch.Tensor) else None))
        return model


@hookimpl
def register_defenses(register: Register) -> None:
    register(NoNorm)
