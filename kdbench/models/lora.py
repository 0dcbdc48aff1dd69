"""LoRA fine-tuning (peft), as [Z] does for its 7B Llama teacher; the adapters are merged before the model is
saved, so every later stage sees a plain transformers model."""

from __future__ import annotations

from typing import Any

from kdbench.core.errors import KdbenchError


def with_lora(model: Any, r: int, alpha: float, dropout: float) -> Any:
    """Wrap ``model`` so that only low-rank adapters on its attention/MLP projections train."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise KdbenchError("LoRA fine-tuning needs peft: pip install 'kdbench[lora]'.") from None
    config = LoraConfig(
        task_type="CAUSAL_LM", r=r, lora_alpha=int(alpha), lora_dropout=dropout, target_modules="all-linear"
    )
    return get_peft_model(model, config)


def merged(model: Any) -> Any:
    """The plain model with the trained adapters folded into its weights."""
    return model.merge_and_unload()
