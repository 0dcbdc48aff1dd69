"""Per-block risk (METHODS.md §6) on tiny GPT-2, OPT and Llama models saved to disk and reloaded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    OPTConfig,
    PretrainedConfig,
)

from kdbench.analysis.blocks import per_block_risk
from kdbench.cli import main
from kdbench.core.cache import ArtifactCache
from kdbench.core.errors import KdbenchError
from kdbench.evaluation import metrics
from kdbench.models import hub as models
from kdbench.models.perturb import perturbed, transformer_blocks
from tests.attack_helpers import AttackWorld, one_thread_own_cache  # noqa: F401 - autouse fixture


def configs(vocab: int) -> dict[str, tuple[PretrainedConfig, str, int]]:
    """name -> (config, where its blocks live, how many)"""
    return {
        "gpt2": (GPT2Config(vocab_size=vocab, n_positions=64, n_embd=16, n_layer=2, n_head=2), "transformer.h", 2),
        "opt": (OPTConfig(vocab_size=vocab, hidden_size=16, word_embed_proj_dim=16, num_hidden_layers=3, ffn_dim=32,
                          num_attention_heads=2, max_position_embeddings=64), "model.decoder.layers", 3),
        "llama": (LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64),
                  "model.layers", 2),
    }


def saved(world: AttackWorld, root: Path, config: PretrainedConfig) -> Path:
    torch.manual_seed(0)
    directory = root / config.model_type
    models.save_model(AutoModelForCausalLM.from_config(config), world.tokenizer, directory)
    return directory


@pytest.mark.parametrize("arch", ["gpt2", "opt", "llama"])
def test_blocks_are_found_and_perturbed_one_at_a_time(world: AttackWorld, tmp_path: Path, arch: str) -> None:
    config, path, n_blocks = configs(len(world.tokenizer))[arch]
    model = models.load_model(saved(world, tmp_path, config))  # reloaded from disk
    blocks = transformer_blocks(model)
    assert len(blocks) == n_blocks
    node: Any = model
    for attribute in path.split("."):
        node = getattr(node, attribute)
    assert [id(b) for b in blocks] == [id(b) for b in node]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inside = {id(p) for p in blocks[1].parameters()}
    names_inside = {name for name, p in model.named_parameters() if id(p) in inside}
    with perturbed(model, 0.1, seed=1, block=1):
        changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and changed <= names_inside
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("arch", ["gpt2", "opt", "llama"])
def test_analyze_blocks_cli(world: AttackWorld, tmp_path: Path, arch: str) -> None:
    config, _, n_blocks = configs(len(world.tokenizer))[arch]
    directory = saved(world, tmp_path, config)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [
        "analyze", "blocks", "--model", str(directory), "--members", str(world.file("members.txt")),
        "--nonmembers", str(world.file("nonmembers.txt")), "--copies", "2", "--bootstrap", "20", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "per_block.json").read_text())
    assert (data["sigma"], data["copies"], data["seeds"]) == (0.005, 2, [1, 2])
    (target,) = data["targets"]
    assert target["architecture"] == arch and target["n_blocks"] == n_blocks
    assert len(target["per_block_auc"]) == n_blocks and all(0 <= a <= 1 for a in target["per_block_auc"])
    assert "AUC" in result.output and "per_block.json" in result.output.replace("\n", "")  # rich wraps long paths


def test_per_block_auc_is_the_auc_of_that_blocks_mope(world: AttackWorld, tmp_path: Path) -> None:
    scoring = world.scoring(world.host(cache=ArtifactCache(tmp_path)))
    n = len(world.members)
    (risk,) = per_block_risk(scoring, n, sigma=0.02, copies=3, n_resamples=20)
    scores = scoring.mope(0.02, 3, block=0)
    assert risk.auc == metrics.roc_auc(scores[:n], scores[n:])
    assert risk.auc > 0.6  # the memoriser's only block carries its membership signal
    assert risk.auc_ci[0] <= risk.auc <= risk.auc_ci[1]


def test_unknown_architectures_are_refused(world: AttackWorld, tmp_path: Path) -> None:
    config = GPTNeoXConfig(vocab_size=len(world.tokenizer), hidden_size=16, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=32)
    directory = saved(world, tmp_path, config)
    with pytest.raises(KdbenchError, match=r"'gpt_neox'.*supported architectures: gpt2"):
        transformer_blocks(models.load_model(directory))
    result = CliRunner().invoke(main, [
        "analyze", "blocks", "--model", str(directory), "--members", str(world.file("members.txt")),
        "--nonmembers", str(world.file("nonmembers.txt")), "--out", str(tmp_path / "out"),
    ])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "does not know where the transformer blocks of a 'gpt_neox' model are" in result.output


def test_bad_invocations(world: AttackWorld) -> None:
    for args, needle in (
        (["--copies", "2"], "Give either --model"),
        (["--model", str(world.memorizer)], "--model needs --members FILE and --nonmembers FILE"),
    ):
        result = CliRunner().invoke(main, ["analyze", "blocks", *args])
        assert result.exit_code != 0 and needle in result.output, result.output


@pytest.mark.slow
def test_analyze_a_finished_run(small_run_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["analyze", "blocks", "--run", str(small_run_dir), "--copies", "1",
                                       "--bootstrap", "20", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "per_block.json").read_text())
    assert sorted(t["target"] for t in data["targets"]) == ["baseline", "student", "teacher"]
    assert all(t["n_blocks"] == 1 and t["architecture"] == "gpt2" for t in data["targets"])
    assert data["n_members"] == data["n_nonmembers"] == 30


@pytest.mark.slow
def test_per_block_risk_reaches_the_records_and_the_leaderboard(small_run_dir: Path, tmp_path: Path) -> None:
    """`analyze blocks --run DIR` writes DIR/per_block.json; loading DIR's results attaches each model's AUCs
    to that model's records (by provenance.model_key), and the leaderboard's entry page draws them."""
    import shutil

    from kdbench.results.records import load_records

    run = tmp_path / "run"
    shutil.copytree(small_run_dir, run)  # the session's run stays as it was
    before = load_records([run])
    assert all("per_block_auc" not in r["provenance"] and r["provenance"]["model_key"] for r in before)
    result = CliRunner().invoke(main, ["analyze", "blocks", "--run", str(run), "--copies", "1", "--bootstrap", "20"])
    assert result.exit_code == 0, result.output
    report = json.loads((run / "per_block.json").read_text())
    by_key = {t["model_key"]: t["per_block_auc"] for t in report["targets"]}
    records = load_records([run])
    assert all(r["provenance"]["per_block_auc"] == by_key[r["provenance"]["model_key"]] for r in records)

    site = tmp_path / "site"
    result = CliRunner().invoke(main, ["leaderboard", "build", str(run), "--out", str(site)])
    assert result.exit_code == 0, result.output
    pages = [p.read_text(encoding="utf-8") for p in site.glob("*/entries/*.html")]
    assert pages and all("Per-block privacy risk" in page for page in pages)


def test_a_broken_per_block_file_names_itself(small_run_dir: Path, tmp_path: Path) -> None:
    import shutil

    from kdbench.results.records import ResultsFileError, load_records

    run = tmp_path / "run"
    shutil.copytree(small_run_dir, run)
    (run / "per_block.json").write_text('{"targets": [{"model_key": "x", "per_block_auc": [1.5]}]}')
    with pytest.raises(ResultsFileError, match=r"per_block\.json: the per-block AUCs of model x"):
        load_records([run])
    (run / "per_block.json").write_text("{not json")
    with pytest.raises(ResultsFileError, match=r"per_block\.json: not a per-block report"):
        load_records([run])
