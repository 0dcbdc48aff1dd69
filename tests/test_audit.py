"""``kdbench audit`` end to end on tiny models saved to disk, and every kind of bad input it must refuse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from transformers import ViTConfig, ViTModel

from kdbench.cli import main
from tests.attack_helpers import MAX_TOKENS, AttackWorld, one_thread_own_cache  # noqa: F401 - autouse fixture


def audit(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["audit", "--max-tokens", str(MAX_TOKENS), "--bootstrap", "50",
                                       *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def audit_json(world: AttackWorld, *args: str | Path, model: Path | None = None) -> dict[str, Any]:
    code, output = audit("--model", model or world.memorizer, *args, "--json")
    assert code == 0, output
    return dict(json.loads(output[output.index("{"):]))


def refused(code: int, output: str, *needles: str) -> None:
    assert code != 0
    assert "Traceback" not in output
    for needle in needles:
        assert needle in output, output


def files(world: AttackWorld) -> tuple[str, ...]:
    return ("--members", str(world.file("members.txt")), "--nonmembers", str(world.file("nonmembers.txt")))


def test_loss_separates_the_members_of_a_memorising_model(world: AttackWorld) -> None:
    result = audit_json(world, *files(world), "--attack", "loss,zlib")
    assert result["attacks"]["loss"]["auc"] > 0.85
    assert result["members"]["n"] == result["nonmembers"]["n"] == len(world.members)
    assert result["attacks"]["loss"]["fpr_resolution"] == pytest.approx(1 / len(world.nonmembers))


def test_a_model_that_saw_neither_file_is_near_chance(world: AttackWorld) -> None:
    result = audit_json(world, *files(world), "--attack", "loss", model=world.outsider)
    assert abs(result["attacks"]["loss"]["auc"] - 0.5) < 0.25


def test_table_output_and_per_sample_scores(world: AttackWorld, tmp_path: Path) -> None:
    out = tmp_path / "scores.jsonl"
    code, output = audit("--model", world.memorizer, *files(world), "--attack", "loss,mink++", "--scores-out", out)
    assert code == 0, output
    assert "loss" in output and "mink++" in output and "FPR resolution 1/16" in output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["_meta"]["model"] == str(world.memorizer)
    rows = lines[1:]
    assert [r["member"] for r in rows] == [True] * len(world.members) + [False] * len(world.nonmembers)
    assert rows[0]["id"] == "members.txt:1" and set(rows[0]) == {"id", "member", "loss", "mink++"}


def test_a_repeated_audit_is_served_from_the_cache(world: AttackWorld) -> None:
    first = audit_json(world, *files(world), "--attack", "loss,lowercase")
    second = audit_json(world, *files(world), "--attack", "loss,lowercase")
    assert first["cache"]["built"] == 2 and second["cache"]["built"] == 0
    assert first["attacks"] == second["attacks"]


def test_jsonl_records_text_and_instruction_forms(world: AttackWorld, tmp_path: Path) -> None:
    members, nonmembers = tmp_path / "m.jsonl", tmp_path / "n.jsonl"
    members.write_text("".join(json.dumps({"text": e.response}) + "\n" for e in world.members))
    nonmembers.write_text("".join(json.dumps({"instruction": "Repeat the note.", "context": "",
                                              "response": e.response}) + "\n" for e in world.nonmembers))
    result = audit_json(world, "--members", members, "--nonmembers", nonmembers, "--attack", "loss")
    assert result["members"]["n"] == len(world.members)
    assert 0.0 <= result["attacks"]["loss"]["auc"] <= 1.0


def test_unequal_sizes_are_allowed_with_a_warning(world: AttackWorld, tmp_path: Path) -> None:
    fewer = tmp_path / "few.txt"
    fewer.write_text("".join(e.response + "\n" for e in world.nonmembers[:5]))
    result = audit_json(world, "--members", world.file("members.txt"), "--nonmembers", fewer, "--attack", "loss")
    assert (result["members"]["n"], result["nonmembers"]["n"]) == (16, 5)
    assert result["attacks"]["loss"]["n_nonmembers"] == 5
    assert any("16 members but 5 non-members" in w for w in result["warnings"])


@pytest.mark.parametrize(("content", "needles"), [
    (b"", ("has no samples", "empty.txt")),
    (b"\n  \n\n", ("has no samples",)),
    (b"just one line\n", ("has only 1 sample", "at least 2")),
    (b"caf\xe9 au lait\nsecond line\n", ("not UTF-8", "line 1", "iconv")),
])
def test_bad_member_files(world: AttackWorld, tmp_path: Path, content: bytes, needles: tuple[str, ...]) -> None:
    bad = tmp_path / "empty.txt"
    bad.write_bytes(content)
    code, output = audit("--model", world.memorizer, "--members", bad, "--nonmembers",
                         world.file("nonmembers.txt"), "--attack", "loss")
    refused(code, output, "member file", *needles)


@pytest.mark.parametrize(("lines", "needles"), [
    (['{"text": "a"}', "{not json"], ("bad.jsonl:2", "not valid JSON", "'text'")),
    (['{"text": "a"}', '{"instruction": "x"}'], ("bad.jsonl:2", "no 'response' field")),
    (['{"text": "a"}', '["a list"]'], ("bad.jsonl:2", "not an object")),
    (['{"text": "a"}', '{"text": 3}'], ("bad.jsonl:2", "must be a string")),
    (['[{"text": "a"}, {"text": "b"}]'], ("bad.jsonl:1", "not an object", "one object per line")),
])
def test_bad_jsonl(world: AttackWorld, tmp_path: Path, lines: list[str], needles: tuple[str, ...]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    code, output = audit("--model", world.memorizer, "--members", world.file("members.txt"), "--nonmembers", bad,
                         "--attack", "loss")
    refused(code, output, *needles)


def test_missing_sample_file(world: AttackWorld, tmp_path: Path) -> None:
    code, output = audit("--model", world.memorizer, "--members", tmp_path / "nope.txt", "--nonmembers",
                         world.file("nonmembers.txt"), "--attack", "loss")
    refused(code, output, "nope.txt does not exist")


def test_a_directory_that_is_not_a_causal_lm(world: AttackWorld, tmp_path: Path) -> None:
    vision = tmp_path / "vit"
    ViTModel(ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                       image_size=8, patch_size=4)).save_pretrained(vision)
    code, output = audit("--model", vision, *files(world), "--attack", "loss")
    refused(code, output, "Cannot load a causal language model from", str(vision))
    tokenizer_only = tmp_path / "tokenizer-only"
    world.tokenizer.save_pretrained(tokenizer_only)
    code, output = audit("--model", tokenizer_only, *files(world), "--attack", "loss")
    refused(code, output, "Cannot load a causal language model from")
    code, output = audit("--model", tmp_path / "missing", *files(world), "--attack", "loss")
    refused(code, output, "does not exist")


def test_attacks_needing_what_the_audit_lacks_say_how_to_provide_it(world: AttackWorld) -> None:
    code, output = audit("--model", world.memorizer, *files(world), "--attack", "recall")
    refused(code, output, "--reference-text FILE")
    code, output = audit("--model", world.memorizer, *files(world), "--attack", "ref")
    refused(code, output, "--base MODEL")
    code, output = audit("--model", world.memorizer, *files(world), "--attack", "ref:model=baseline")
    refused(code, output, "only in kdbench run")
    code, output = audit("--model", world.memorizer, *files(world), "--attack", "lossy")
    refused(code, output, "Unknown attack 'lossy'")


def test_reference_text_and_base_enable_the_calibrated_attacks(world: AttackWorld) -> None:
    result = audit_json(world, *files(world), "--attack", f"recall,dc-pdd,ref:model={world.outsider}",
                        "--reference-text", world.file("reference.txt"), "--base", "builtin:gpt2-micro")
    assert all(m["auc"] > 0.75 for m in result["attacks"].values()), result["attacks"]
