"""Tiny models, tokenizer, data and jobs for the distiller, strategy and teacher-output tests.

Everything is built from configs (no download) and small enough that a whole distillation takes about a second
on a 2-core CPU. ``rig`` makes a model emit one token with probability ~1, so a test can tell from the tokens
of a sequence which model produced it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.modeling_outputs import CausalLMOutput

from kdbench.core.cache import ArtifactCache
from kdbench.core.data import PromptTemplate
from kdbench.core.types import Encoded, TrainConfig
from kdbench.distill.job import DistillJob
from kdbench.models import hub as models
from kdbench.tasks import synthetic
from kdbench.training.loop import encode

TEMPLATE = PromptTemplate(
    "### Instruction:\n{instruction}\n\n### Input:\n{context}\n\n### Response:\n",
    "### Instruction:\n{instruction}\n\n### Response:\n",
)
MAX_PROMPT, MAX_TOTAL = 40, 56
VOCAB = 1000  # larger than the default top-k (512), so the teacher-output cache really truncates


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """Run each test with one intra-op thread (restored afterwards): tiny models gain nothing from more, and on
    a shared 2-core machine OpenMP's spinning threads slow them down by orders of magnitude (measured 60x).
    Autouse in every module that imports it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.lru_cache(maxsize=1)
def tokenizer() -> Any:
    records = synthetic.generate(seed=3, n_people=6, n_records=40)
    return models.train_bpe_tokenizer([TEMPLATE.prompt(e) + e.response for e in records], VOCAB)


@functools.lru_cache(maxsize=1)
def _data() -> tuple[Encoded, ...]:
    records = synthetic.generate(seed=3, n_people=6, n_records=40)
    return tuple(encode(records[:16], tokenizer(), TEMPLATE, max_prompt=MAX_PROMPT, max_total=MAX_TOTAL))


def data(n: int = 16) -> list[Encoded]:
    return list(_data()[:n])


def tiny_model(seed: int, n_embd: int = 32, n_layer: int = 1) -> GPT2LMHeadModel:
    tok = tokenizer()
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tok), n_positions=MAX_TOTAL + 8, n_embd=n_embd, n_layer=n_layer, n_head=2,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def rig(model: GPT2LMHeadModel, token: int, strength: float = 60.0) -> GPT2LMHeadModel:
    """Make ``model`` predict ``token`` with probability ~1 at every position, whatever the context: the final
    layer norm outputs a constant unit vector e_0, and only ``token``'s (tied) embedding has a large e_0 part."""
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = 1.0
        model.transformer.wte.weight[:, 0] = 0.0
        model.transformer.wte.weight[token, 0] = strength
    return model


def token(text: str) -> int:
    """A token id that is neither EOS nor padding."""
    ids = tokenizer()(text, add_special_tokens=False)["input_ids"]
    assert ids and ids[0] != tokenizer().eos_token_id
    return int(ids[0])


def job(
    teacher: Any | None = None,
    student: Any | None = None,
    data_: Sequence[Encoded] | None = None,
    *,
    cache: ArtifactCache | None = None,
    teacher_key: str = "",
    lr: float = 3e-3,
    epochs: int = 1,
    batch_size: int = 4,
    seed: int = 0,
    defenses: Any = None,
) -> DistillJob:
    from kdbench.defense.stack import DefenseStack

    return DistillJob(
        teacher=teacher if teacher is not None else tiny_model(1),
        student=student if student is not None else tiny_model(2),
        tokenizer=tokenizer(),
        data=list(data_ if data_ is not None else data()),
        config=TrainConfig(lr=lr, epochs=epochs, batch_size=batch_size),
        seed=seed,
        device=torch.device("cpu"),
        teacher_key=teacher_key,
        cache=cache,
        defenses=defenses if defenses is not None else DefenseStack([]),
        max_total_tokens=MAX_TOTAL,
    )


def responses(batch: dict[str, torch.Tensor]) -> list[list[int]]:
    """The response tokens (label positions) of each row of a collated batch."""
    out = []
    for ids, labels in zip(batch["input_ids"], batch["labels"], strict=True):
        out.append(ids[labels != -100].tolist())
    return out


def prompts(batch: dict[str, torch.Tensor]) -> list[list[int]]:
    """The prompt tokens of each row (before the first label; padding excluded)."""
    out = []
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True):
        first = int((labels != -100).nonzero()[0])
        out.append(ids[:first][mask[:first].bool()].tolist())
    return out


def weights(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class LogitsOnly(torch.nn.Module):
    """A model wrapper that returns logits and no KV cache, as the temperature and redlist defenses do: decoding it
    must take the path that rereads the sequence (and give what the cached path gives for the model inside)."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **kwargs: Any) -> CausalLMOutput:
        kept = {k: v for k, v in kwargs.items() if k == "position_ids"}
        return CausalLMOutput(logits=self.inner(input_ids=input_ids, attention_mask=attention_mask, **kept).logits)
