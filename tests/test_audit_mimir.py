"""``kdbench audit`` per-sample scores against MIMIR's definitions, computed here independently (one unbatched
forward pass per text, as MIMIR's ``get_probabilities`` does) on tiny GPT-2s saved with ``save_pretrained``: one
whose tokenizer declares a BOS but does not add it (GPT-2's), one whose tokenizer adds it (Llama's).

MIMIR (iamgroot42/mimir) scores ``tokenizer(text)`` as the tokenizer encodes it by default and never the first
token; its scores are oriented lower = member, kdbench's higher = member, so each kdbench score is −MIMIR's.
"""

from __future__ import annotations

import functools
import json
import shutil
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tokenizers import processors
from transformers import AutoModelForCausalLM, AutoTokenizer

from kdbench.cli import main
from tests.attack_helpers import AttackWorld, one_thread_own_cache  # noqa: F401 - autouse fixture

K = 0.2  # MIMIR's default k for Min-K% and Min-K%++
LONG = "512"  # longer than any sample: no truncation (MIMIR has none)


def adds_bos(world: AttackWorld, root: Path) -> Path:
    """The memoriser with a tokenizer that adds its BOS to every text, as Llama's does."""
    out = root / "adds-bos"
    if not out.exists():
        shutil.copytree(world.memorizer, out)
        tokenizer = AutoTokenizer.from_pretrained(out)
        bos = tokenizer.bos_token
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, tokenizer.bos_token_id)]
        )
        tokenizer.save_pretrained(out)
    return out


@functools.cache
def load(model_dir: Path) -> tuple[Any, Any]:
    return AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir).eval()


def mimir_logprobs(model_dir: Path, text: str, prepend_bos: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(log p of each token after the first, full log-softmax at those positions) as MIMIR computes them."""
    tokenizer, model = load(model_dir)
    ids = tokenizer(text)["input_ids"]
    if prepend_bos:
        ids = [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].double()
    logq = torch.log_softmax(logits, -1)
    return logq[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy(), logq.numpy()


def mimir_scores(model_dir: Path, reference_dir: Path, text: str) -> dict[str, float]:
    """MIMIR's loss, zlib, min-k, min-k++ and ref for one text (MIMIR's sign: lower = member)."""
    lp, logq = mimir_logprobs(model_dir, text)
    nll = -lp.mean()
    q = np.exp(logq)
    mu = (q * logq).sum(-1)
    sigma = np.sqrt((q * logq**2).sum(-1) - mu**2)
    z = (lp - mu) / sigma
    n = int(len(lp) * K)
    return {
        "loss": nll,
        "zlib": nll / len(zlib.compress(text.encode("utf-8"))),
        "mink": -np.sort(lp)[:n].mean(),
        "mink++": -np.sort(z)[:n].mean(),
        "ref": nll + mimir_logprobs(reference_dir, text)[0].mean(),
    }


def audit_scores(model_dir: Path, world: AttackWorld, out: Path, *args: str) -> tuple[dict[str, Any], list[dict]]:
    result = CliRunner().invoke(main, [
        "audit", "--model", str(model_dir), "--members", str(world.file("members.txt")),
        "--nonmembers", str(world.file("nonmembers.txt")), "--max-tokens", LONG, "--bootstrap", "10",
        "--scores-out", str(out), "--json", *args,
    ])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    return json.loads(result.output[result.output.index("{"):]), lines


@pytest.mark.parametrize("tokenizer_adds_bos", [False, True], ids=["gpt2-style", "llama-style"])
def test_audit_scores_equal_mimirs_definitions(world: AttackWorld, tmp_path: Path, tokenizer_adds_bos: bool) -> None:
    model_dir = adds_bos(world, tmp_path) if tokenizer_adds_bos else world.memorizer
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = world.members[0].response
    assert (tokenizer(text)["input_ids"][0] == tokenizer.bos_token_id) == tokenizer_adds_bos
    report, lines = audit_scores(model_dir, world, tmp_path / "scores.jsonl", "--attack",
                                 f"loss,zlib,mink,mink++,ref:model={world.outsider}")
    assert report["text_encoding"] == lines[0]["_meta"]["text_encoding"] == "tokenizer"
    samples = world.members + world.nonmembers
    for row, sample in zip(lines[1:], samples, strict=True):
        expected = mimir_scores(model_dir, world.outsider, sample.response)
        labels = {key.split(":")[0]: key for key in row}  # ref's label carries its model parameter
        for attack, value in expected.items():
            assert row[labels[attack]] == pytest.approx(-value, abs=1e-6), (attack, sample.id)


def test_prepend_scores_every_token_after_the_bos(world: AttackWorld, tmp_path: Path) -> None:
    """``--bos prepend``: the other convention (MIMIR's DC-PDD reads texts this way, with EOS = BOS on GPT-2)."""
    report, lines = audit_scores(world.memorizer, world, tmp_path / "scores.jsonl", "--attack", "loss",
                                 "--bos", "prepend")
    assert report["text_encoding"] == "prepend"
    for row, sample in zip(lines[1:], world.members + world.nonmembers, strict=True):
        lp = mimir_logprobs(world.memorizer, sample.response, prepend_bos=True)[0]
        assert len(lp) == len(AutoTokenizer.from_pretrained(world.memorizer)(sample.response)["input_ids"])
        assert row["loss"] == pytest.approx(lp.mean(), abs=1e-6)


def test_recall_joins_prefix_and_text_as_mimir(world: AttackWorld, tmp_path: Path) -> None:
    """MIMIR's ReCaLL: LL(text | prefix) over every text token after ``tokenizer(prefix)``, no BOS between,
    divided by the plain NLL of the text (so −kdbench's ratio of two log-likelihoods). One shot from a
    reference file of two equal short lines, so which line is drawn does not matter and the prefix fits."""
    shot = "Records are kept here."
    reference = tmp_path / "reference.txt"
    reference.write_text(f"{shot}\n{shot}\n", encoding="utf-8")
    for tokenizer_adds_bos in (False, True):
        model_dir = adds_bos(world, tmp_path) if tokenizer_adds_bos else world.memorizer
        _, lines = audit_scores(model_dir, world, tmp_path / "scores.jsonl", "--attack", "recall:shots=1",
                                "--reference-text", str(reference))
        tokenizer, model = load(model_dir)
        prefix = tokenizer(shot + "\n\n")["input_ids"]  # kdbench separates shots with a blank line
        checked = 0
        for row, sample in zip(lines[1:], world.members + world.nonmembers, strict=True):
            body = tokenizer(sample.response, add_special_tokens=False)["input_ids"]
            if len(prefix) + len(body) > model.config.n_positions or checked == 8:
                continue  # kdbench would cut the prefix to fit (MIMIR drops shots instead): not compared
            checked += 1
            ids = torch.tensor([prefix + body])
            with torch.no_grad():
                logq = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
            positions = torch.arange(len(prefix) - 1, len(prefix) + len(body) - 1)
            conditional = logq[positions, torch.tensor(body)].mean().item()
            mimir = conditional / -mimir_logprobs(model_dir, sample.response)[0].mean()
            assert row["recall:shots=1"] == pytest.approx(-mimir, abs=1e-6), (tokenizer_adds_bos, sample.id)
        assert checked == 8
