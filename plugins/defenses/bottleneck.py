"""``bottleneck``: each FFN's first projection Linear(H→I) becomes Linear(H→B) → GELU → Linear(B→I), with
B = min(``B``, H) and ``B`` = 192 by default ([C]'s revision, METHODS.md §7).

Which module is "the first projection", by ``config.model_type``:
- gpt2: ``mlp.c_fc`` (a transformers ``Conv1D``, weight H×I; the replacement computes the same x·W + b shape);
- opt: ``fc1``; gpt_neox (Pythia, [C]'s family): ``mlp.dense_h_to_4h``;
- llama, mistral, qwen2: the gated FFN has two first projections, ``gate_proj`` and ``up_proj``; each gets its
  own bottleneck (down_proj(act(gate(x)) ⊙ up(x)) is otherwise unchanged).
Other architectures are refused before training. The new layers are initialised N(0, initializer_range²) with
zero biases, as the model's own linear layers; a pretrained student loses its first FFN projections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from kdbench.api import DefenseBase, KdbenchError, ParameterError, Register, hookimpl

_GATED = ("mlp.gate_proj", "mlp.up_proj")
FIRST_PROJECTIONS: dict[str, tuple[str, ...]] = {
    "gpt2": ("mlp.c_fc",),
    "opt": ("fc1",),
    "gpt_neox": ("mlp.dense_h_to_4h",),
    "llama": _GATED,
    "mistral": _GATED,
    "qwen2": _GATED,
}


@dataclass(frozen=True)
class BottleneckParams:
    """``B``: the bottleneck width (capped at the hidden size H)."""

    B: int = 192

    def __post_init__(self) -> None:
        if self.B < 1:
            raise ParameterError(f"bottleneck: B={self.B!r} must be at least 1.")


def _in_out(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":  # transformers' GPT-2 layer: y = x @ W + b, W of shape (in, out)
        weight: Any = module.weight
        return int(weight.shape[0]), int(weight.shape[1])
    raise KdbenchError(f"bottleneck: expected a Linear or Conv1D first FFN projection, found {type(module).__name__}.")


def _supported(model_type: str) -> None:
    if model_type not in FIRST_PROJECTIONS:
        raise KdbenchError(
            f"bottleneck does not know the FFN of a {model_type!r} model; supported: "
            f"{', '.join(sorted(FIRST_PROJECTIONS))}. Add its first projection to FIRST_PROJECTIONS."
        )


class Bottleneck(DefenseBase):
    name = "bottleneck"
    description = "Each FFN's first projection H→I becomes H→B→GELU→I, B=min(192, H) ([C])."
    Params = BottleneckParams
    stages: ClassVar[frozenset[str]] = frozenset({"student_architecture"})

    def check(self, model_config: Any, distiller: str) -> None:
        if model_config is not None:
            _supported(str(getattr(model_config, "model_type", "unknown")))

    def modify_student(self, model: Any) -> Any:
        config = model.config
        _supported(config.model_type)
        suffixes = FIRST_PROJECTIONS[config.model_type]
        std = float(getattr(config, "initializer_range", 0.02))
        targets = [name for name, _ in model.named_modules() if name.endswith(suffixes)]
        if not targets:
            raise KdbenchError(f"bottleneck: no {' / '.join(suffixes)} module in this {config.model_type} model.")
        for name in targets:
            parent_name, _, attribute = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            old = getattr(parent, attribute)
            hidden, inner = _in_out(old)
            width = min(self.params.B, hidden)
            down, up = nn.Linear(hidden, width), nn.Linear(width, inner)
            for layer in (down, up):
                nn.init.normal_(layer.weight, std=std)
                nn.init.zeros_(layer.bias)
            like: Any = old.weight
            setattr(parent, attribute, nn.Sequential(down, nn.GELU(), up).to(device=like.device, dtype=like.dtype))
        return model


@hookimpl
def register_defenses(register: Register) -> None:
    register(Bottleneck)
