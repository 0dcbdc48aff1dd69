"""A model's transformer blocks, and Gaussian perturbation of their weights (MoPe, per-block risk)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from kdbench.core.errors import KdbenchError

# config.model_type -> the attribute path of its list of transformer blocks
ARCHITECTURES = {"gpt2": "transformer.h", "opt": "model.decoder.layers", "llama": "model.layers"}


def architecture(model: Any) -> str:
    model_type = str(getattr(getattr(model, "config", None), "model_type", "unknown"))
    if model_type not in ARCHITECTURES:
        supported = ", ".join(f"{k} ({v})" for k, v in ARCHITECTURES.items())
        raise KdbenchError(
            f"Per-block risk does not know where the transformer blocks of a {model_type!r} model are; supported "
            f"architectures: {supported}. Add the block list's attribute path to kdbench.models.perturb.ARCHITECTURES."
        )
    return model_type


def transformer_blocks(model: Any) -> list[torch.nn.Module]:
    """The model's transformer blocks, in order."""
    path = ARCHITECTURES[architecture(model)]
    node = model
    for attribute in path.split("."):
        node = getattr(node, attribute, None)
        if node is None:
            raise KdbenchError(f"A {model.config.model_type!r} model without {path}: not a causal LM kdbench knows.")
    return list(node)


@contextmanager
def perturbed(model: Any, sigma: float, seed: int, block: int | None = None) -> Iterator[None]:
    """Add N(0, σ²) noise to every weight (``block`` None) or to transformer block ``block``'s only, drawn from
    a CPU generator seeded ``seed`` in parameter order (the same on every device); restore them exactly after."""
    if block is None:
        params = list(model.parameters())
    else:
        blocks = transformer_blocks(model)
        if not 0 <= block < len(blocks):
            raise KdbenchError(f"Block {block} does not exist; the model has {len(blocks)} (0..{len(blocks) - 1}).")
        params = list(blocks[block].parameters())
    originals = [p.detach().clone() for p in params]
    generator = torch.Generator().manual_seed(seed)
    try:
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn(p.shape, generator=generator).to(p.device, p.dtype) * sigma)
        yield
    finally:
        with torch.no_grad():
            for p, original in zip(params, originals, strict=True):
                p.copy_(original)
