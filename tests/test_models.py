"""The real-model path: transformers models saved to disk (safetensors) and loaded back by name or path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from transformers import GPT2Config, GPT2LMHeadModel

from kdbench.cli import main
from kdbench.core.errors import KdbenchError
from kdbench.models import hub as models
from kdbench.tasks.synthetic import generate


@pytest.fixture(scope="module")
def tiny_pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT-2 and its tokenizer written with save_pretrained, as a hub checkpoint would be."""
    directory = tmp_path_factory.mktemp("tiny-gpt2")
    texts = [e.instruction + " " + e.context + " " + e.response for e in generate(3, 10, 60)]
    tokenizer = models.train_bpe_tokenizer(texts, vocab_size=400)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=1, n_head=2,
                        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    models.save_model(GPT2LMHeadModel(config), tokenizer, directory)
    return directory


def test_saved_model_loads_back_identically(tiny_pretrained: Path) -> None:
    assert (tiny_pretrained / "model.safetensors").exists()
    model = models.load_model(tiny_pretrained)
    tokenizer = models.load_tokenizer(tiny_pretrained)
    ids = torch.tensor([tokenizer("Marvo lives in a city.")["input_ids"]])
    again = models.load_model(tiny_pretrained)
    assert torch.equal(model(ids).logits, again(ids).logits)


def test_directory_that_is_not_a_causal_lm(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "not-a-model"}))
    with pytest.raises(KdbenchError, match="Cannot load a causal language model"):
        models.load_model(tmp_path)


def test_run_with_teacher_and_student_from_disk(tiny_pretrained: Path, tiny_task: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "run", "--task", str(tiny_task), "--teacher", str(tiny_pretrained), "--student", str(tiny_pretrained),
        "--distiller", "kd", "--attack", "loss", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["model"] for r in records} == {str(tiny_pretrained)}
    assert len(records) == 6  # loss and the blind reference, on teacher, baseline and student


def test_the_bf16_path_trains_and_scores_finitely(tiny_pretrained: Path, tmp_path: Path) -> None:
    """What a pretrained checkpoint goes through on a bf16 CUDA device (no GPU here; torch runs bf16 on the
    CPU too): loaded in bf16, fine-tuned, saved and reloaded in bf16, then scored and decoded. The losses and
    token statistics must stay finite and the statistics be computed in float (log-softmax in float32)."""
    from kdbench.core.data import PromptTemplate
    from kdbench.core.types import TrainConfig
    from kdbench.scoring.tokenstats import compute_token_stats
    from kdbench.training.loop import LoopSettings, encode, sft_loss, train_loop
    from kdbench.training.loop import generate as decode

    tokenizer = models.load_tokenizer(tiny_pretrained)
    model = models.init_model(str(tiny_pretrained), tokenizer, seed=0, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    template = PromptTemplate("{instruction}\n{context}\n", "{instruction}\n")
    data = encode(generate(3, 10, 24), tokenizer, template, max_prompt=48, max_total=96)
    cpu = torch.device("cpu")
    losses = train_loop(model, data, sft_loss, TrainConfig(lr=1e-3, epochs=2, batch_size=8),
                        LoopSettings(seed=0, pad_id=tokenizer.pad_token_id, device=cpu))
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    models.save_model(model, tokenizer, tmp_path / "bf16")
    again = models.load_model(tmp_path / "bf16", cpu)
    assert {p.dtype for p in again.parameters()} == {torch.bfloat16}
    stats = compute_token_stats(again, data, pad_id=tokenizer.pad_token_id, device=cpu)
    assert all(v.dtype.kind == "f" and v.size and bool((abs(v) < 1e6).all()) for v in stats.values.values())
    assert (stats.values["logprob"] <= 0).all()
    out = decode(again, [e.prompt_ids for e in data[:4]], max_new_tokens=5, pad_id=tokenizer.pad_token_id,
                   eos_id=tokenizer.eos_token_id, device=cpu)
    assert len(out) == 4
