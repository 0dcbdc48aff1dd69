"""LoRA fine-tuning (the family teacher of [Z]'s Llama arm) on a tiny real model: only adapters train, and the
merged result is a plain transformers model that differs from its base."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from kdbench.models.lora import merged, with_lora

pytest.importorskip("peft")


def test_lora_trains_adapters_and_merges() -> None:
    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = with_lora(base, r=4, alpha=8, dropout=0.0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 50, (4, 12))
    for _ in range(5):
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    plain = merged(model)
    assert type(plain) is GPT2LMHeadModel
    after = plain.state_dict()
    assert set(after) == set(before)
    assert any(not torch.equal(before[k], after[k]) for k in before)
