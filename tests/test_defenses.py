"""Each built-in defense changes what it claims, checked numerically and independently of its code."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from kdbench_plugins.defenses.ensemble import majority_vote
from kdbench_plugins.defenses.nonorm import is_norm
from transformers import (
    GPTNeoConfig,
    GPTNeoForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    get_cosine_schedule_with_warmup,
)

from kdbench.cli import main
from kdbench.core.data import Example
from kdbench.core.errors import KdbenchError
from kdbench.core.registry import get_registry
from kdbench.core.types import TrainConfig
from kdbench.defense.base import DefenseContext
from kdbench.defense.stack import DefenseStack
from kdbench.models import hub as models
from kdbench.models.defended import instantiate
from kdbench.run.cells import attack_samples
from kdbench.run.context import RunContext
from kdbench.run.student import defense_context
from kdbench.tasks import synthetic
from kdbench.training.loop import collate, encode, generate, sft_loss
from tests.conftest import TINY_TASK
from tests.distill_helpers import MAX_PROMPT, MAX_TOTAL, TEMPLATE, data, job, tiny_model, tokenizer
from tests.test_defense_interface import NoGenerate, ctx  # noqa: F401  (ctx: the tiny task's RunContext fixture)

CPU = torch.device("cpu")


def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=40, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2))


def opt() -> OPTForCausalLM:
    torch.manual_seed(0)
    return OPTForCausalLM(OPTConfig(vocab_size=50, hidden_size=16, ffn_dim=40, num_hidden_layers=1,
                                    num_attention_heads=2, word_embed_proj_dim=16, max_position_embeddings=32))


def stub_context(config: TrainConfig | None = None, distillation: Sequence[Example] = (),
                 hot: frozenset[str] | set[str] = frozenset(), members: Sequence[Example] = (),
                 nonmembers: Sequence[Example] = ()) -> DefenseContext:
    """A context whose "teacher attack" scores 1 for the examples whose id is in ``hot``, else 0."""
    return DefenseContext(
        teacher=None, teacher_model=None, tokenizer=tokenizer(),
        encode=lambda examples: encode(examples, tokenizer(), TEMPLATE, MAX_PROMPT, MAX_TOTAL),
        teacher_scores=lambda attack, examples: np.array([float(e.id in hot) for e in examples]),
        config=config or TrainConfig(lr=1e-3, epochs=1, batch_size=4), distillation=distillation, members=members,
        nonmembers=nonmembers,
    )


# --- nonorm ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [lambda: tiny_model(0), llama], ids=["gpt2-layernorm", "llama-rmsnorm"])
def test_nonorm_leaves_no_normalisation(build: Any) -> None:
    model = build()
    n_norms = sum(is_norm(m) for m in model.modules())
    assert n_norms > 0
    stack = DefenseStack([instantiate("nonorm", {})])
    model = stack.modify_student(model)
    assert not any(is_norm(m) for m in model.modules())
    replaced = [m for m in model.modules() if type(m).__name__ == "Affine"]
    assert len(replaced) == n_norms
    x = torch.randn(3, 5, replaced[0].weight.shape[-1]) * 4 + 2
    for module in replaced:
        with torch.no_grad():
            module.weight.uniform_(0.5, 2.0)
            module.bias.normal_()
            y = module(x)
            assert torch.allclose(y, x * module.weight + module.bias)
            assert not torch.allclose(y, torch.nn.functional.layer_norm(x, x.shape[-1:], module.weight, module.bias))
            # no mean or variance normalisation: a shift or a scale of the input goes straight through
            assert torch.allclose(module(x + 7.0) - y, 7.0 * module.weight.expand_as(y), atol=1e-5)
            assert torch.allclose(module(3.0 * x), 3.0 * y - 2.0 * module.bias, atol=1e-4)
    fresh = stack.modify_student(build())
    ids = torch.randint(0, 50, (2, 6))
    assert torch.isfinite(fresh(input_ids=ids).logits).all()


# --- bottleneck ------------------------------------------------------------------------------------------------


def test_bottleneck_changes_every_ffn_first_projection() -> None:
    gpt2 = instantiate("bottleneck", {"B": 8}).modify_student(tiny_model(0))
    c_fc = gpt2.transformer.h[0].mlp.c_fc
    assert [type(m).__name__ for m in c_fc] == ["Linear", "GELU", "Linear"]
    assert (c_fc[0].in_features, c_fc[0].out_features, c_fc[2].out_features) == (32, 8, 128)

    small = instantiate("bottleneck", {"B": 8}).modify_student(opt())
    fc1 = small.model.decoder.layers[0].fc1
    assert (fc1[0].in_features, fc1[0].out_features, fc1[2].in_features, fc1[2].out_features) == (16, 8, 8, 40)

    gated = instantiate("bottleneck", {}).modify_student(llama())  # B = min(192, H = 16)
    mlp = gated.model.layers[0].mlp
    for projection in (mlp.gate_proj, mlp.up_proj):
        assert (projection[0].out_features, projection[2].out_features) == (16, 40)
    assert isinstance(mlp.down_proj, torch.nn.Linear)
    for model in (gpt2, small, gated):
        assert torch.isfinite(model(input_ids=torch.randint(0, 50, (2, 5))).logits).all()


def test_bottleneck_refuses_an_unknown_architecture() -> None:
    config = GPTNeoConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, attention_types=[[["global"], 1]])
    defense = instantiate("bottleneck", {})
    with pytest.raises(KdbenchError, match="gpt_neo"):
        defense.check(config, "kd")
    with pytest.raises(KdbenchError, match="gpt_neo"):
        defense.modify_student(GPTNeoForCausalLM(config))


# --- nonvulnerable ---------------------------------------------------------------------------------------------


def independent_flags(model: Any, context: RunContext, pool: Sequence[Example], members: Sequence[Example],
                      nonmembers: Sequence[Example], guard: float) -> tuple[np.ndarray, np.ndarray]:
    """The loss attack by hand (one unpadded forward per example) and [C]'s threshold by brute force:
    maximal balanced accuracy with both predicted classes ≥ ``guard``, the highest such threshold."""

    def scores(examples: Sequence[Example]) -> np.ndarray:
        out = []
        with torch.no_grad():
            for e in context.encode(examples):
                ids = torch.tensor([e.input_ids])
                logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
                picked = logp.gather(-1, ids[0, 1:, None])[:, 0]
                out.append(float(picked[len(e.prompt_ids) - 1 :].mean()))
        return np.array(out)

    m, n = scores(members), scores(nonmembers)
    best, threshold = -1.0, np.inf
    for t in sorted(set(np.concatenate([m, n])), reverse=True):
        flagged = (m >= t).sum() + (n >= t).sum()
        total = m.size + n.size
        if flagged / total < guard or (total - flagged) / total < guard:
            continue
        accuracy = ((m >= t).mean() + (n < t).mean()) / 2
        if accuracy > best + 1e-12:
            best, threshold = accuracy, t
    pool_scores = scores(pool)
    return pool_scores >= threshold, np.abs(pool_scores - threshold) < 1e-4


@pytest.mark.parametrize("extra", [0.0, 0.5])
def test_nonvulnerable_removes_exactly_the_points_the_teacher_attack_flags(ctx: RunContext, extra: float) -> None:  # noqa: F811
    teacher = ctx.teacher()
    members, nonmembers = attack_samples(ctx.task, ctx.splits)
    pool = [*members[:12], *nonmembers[:12], *ctx.distillation_data()[:12]]
    defense = instantiate("nonvulnerable", {"attack": "loss", "extra": extra, "min_class_fraction": 0.2})
    stack = DefenseStack([defense])
    stack.prepare(defense_context(ctx, teacher, ctx.training("student"), pool, (members, nonmembers)))
    kept = stack.select_data(pool)

    flags, ambiguous = independent_flags(ctx.model(teacher), ctx, pool, members, nonmembers, 0.2)
    assert flags.sum() > 0 and ambiguous.sum() <= 1
    clear = [i for i in range(len(pool)) if not ambiguous[i]]
    kept_ids = {e.id for e in kept}
    assert all(pool[i].id in kept_ids for i in clear if not flags[i])  # every unflagged point stays
    added = [i for i in clear if flags[i] and pool[i].id in kept_ids]
    report = stack.report()["nonvulnerable"]
    assert report["n_flagged"] == pytest.approx(flags.sum(), abs=int(ambiguous.sum()))
    assert report["n_added_back"] == int(extra * report["n_flagged"])
    assert len(added) <= report["n_added_back"] <= len(added) + ambiguous.sum()
    assert report["n_kept"] == len(kept) == len(pool) - report["n_flagged"] + report["n_added_back"]
    assert [e.id for e in kept] == [e.id for e in pool if e.id in kept_ids]  # order kept


# --- dp-sgd ----------------------------------------------------------------------------------------------------


def test_dp_sgd_spends_at_most_the_target_epsilon() -> None:
    pytest.importorskip("opacus")
    stack = DefenseStack([instantiate("dp-sgd", {"epsilon": 3.0, "delta": None, "max_grad_norm": 1.0,
                                                 "accountant": "rdp"})])
    j = job(defenses=stack, epochs=2, batch_size=4)
    stack.check(tiny_model(0).config, "kd")
    stack.prepare(stub_context(j.config))
    stack.start_student(0, len(j.data))
    j.train(sft_loss, j.config)
    stack.finish_student(0, j.student)
    report = stack.report()["dp-sgd"]
    assert 0.5 < report["epsilon_spent"] <= 3.0
    assert report["delta"] == 1 / len(j.data) and report["steps"] == report["planned_steps"] == [8]
    assert report["noise_multiplier"][0] > 0
    assert not hasattr(next(j.student.parameters()), "grad_sample")  # Opacus detached from the student


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")  # Opacus' calibration search, harmless
def test_dp_sgd_clips_every_sample_before_adding_noise() -> None:
    pytest.importorskip("opacus")
    clip = 0.01
    stack = DefenseStack([instantiate("dp-sgd", {"epsilon": 1.0, "delta": 1e-3, "max_grad_norm": clip,
                                                 "accountant": "rdp"})])
    stack.prepare(stub_context(TrainConfig(lr=1e-3, epochs=1, batch_size=4)))
    stack.start_student(0, 16)
    model = tiny_model(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    wrapped, private, _ = stack.wrap_training(model, optimizer, get_cosine_schedule_with_warmup(optimizer, 0, 4))
    assert private.noise_multiplier > 0 and private.max_grad_norm == clip
    sft_loss(wrapped, collate(data(3), tokenizer().pad_token_id)).backward()
    params = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad_sample.shape[0] == 3 for p in params)  # per-sample gradients, every parameter
    raw = torch.stack([p.grad_sample.reshape(3, -1).norm(dim=1) for p in params]).norm(dim=0)
    assert (raw > 10 * clip).all()
    private.noise_multiplier = 0.0  # isolate the clipping: the update is the mean of clipped gradients
    private.pre_step()
    total = torch.stack([p.grad.norm() for p in params]).norm()
    assert total <= 3 * clip / 4 + 1e-6


def test_dp_sgd_refuses_a_student_trained_without_its_privacy_engine() -> None:
    pytest.importorskip("opacus")
    stack = DefenseStack([instantiate("dp-sgd", {"epsilon": 8.0, "delta": None, "max_grad_norm": 1.0,
                                                 "accountant": "rdp"})])
    stack.prepare(stub_context())
    stack.start_student(0, 16)
    with pytest.raises(KdbenchError, match="without the shared loop's optimizer hook"):
        stack.finish_student(0, tiny_model(0))


# --- ensemble --------------------------------------------------------------------------------------------------


def test_majority_vote_thresholds_each_member_then_votes() -> None:
    members = np.array([0.9, 0.8, 0.2, 0.7]), np.array([0.9, 0.1, 0.8, 0.7]), np.array([0.1, 0.8, 0.8, 0.7])
    scores = [np.concatenate([m, np.full(4, 0.5)]) for m in members]
    vote = majority_vote(scores, 4, 0.0)
    assert vote["tpr"] == 1.0 and vote["fpr"] == 0.0 and vote["member_balanced_accuracy"] == [0.875] * 3


# --- redlist / temperature ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "change"), [("redlist", lambda x: x - 1.0), ("temperature", lambda x: x * 0.5)])
def test_postprocessing_changes_exactly_the_listed_tokens(name: str, change: Any, tmp_path: Path) -> None:
    records = synthetic.generate(seed=3, n_people=6, n_records=40)
    members, nonmembers, pool = records[:10], records[10:20], records[20:30]
    hot = {e.id for e in members} | {pool[1].id, pool[4].id}
    defense = instantiate(name, {"attack": "loss", "min_class_fraction": 0.2})
    defense.prepare(stub_context(distillation=pool, hot=hot, members=members, nonmembers=nonmembers))
    base = tiny_model(0).eval()
    wrapped = defense.postprocess([base])

    encoded = encode([pool[1], pool[4]], tokenizer(), TEMPLATE, MAX_PROMPT, MAX_TOTAL)
    expected = {t for e in encoded for t in (*e.prompt_ids, *e.response_ids)} - {tokenizer().eos_token_id}
    ids = torch.tensor([encode(pool[:1], tokenizer(), TEMPLATE, MAX_PROMPT, MAX_TOTAL)[0].input_ids])
    with torch.no_grad():
        before, after = base(input_ids=ids).logits, wrapped(input_ids=ids).logits
    changed = {int(t) for t in torch.nonzero((after != before).any(dim=(0, 1)))[:, 0]}
    assert changed == expected
    listed = sorted(expected)
    assert torch.allclose(after[..., listed], change(before[..., listed]))
    assert defense.report()["n_vulnerable"] == 2

    models.save_model(wrapped, tokenizer(), tmp_path)
    loaded = models.load_model(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, after)
    prompts = [list(ids[0, :12]), list(ids[0, :7])]
    options: dict[str, Any] = {"max_new_tokens": 5, "pad_id": 0, "eos_id": tokenizer().eos_token_id, "device": CPU}
    assert generate(loaded, prompts, **options) == generate(NoGenerate(loaded), prompts, **options)


# --- teacher-smoothing -------------------------------------------------------------------------------------------


def test_teacher_smoothing_flattens_or_truncates_the_soft_labels() -> None:
    logits = torch.randn(2, 5, 50, generator=torch.Generator().manual_seed(0)) * 3
    flat = instantiate("teacher-smoothing", {"mode": "temperature", "temperature": 2.0, "top_k": 10})
    assert torch.allclose(torch.softmax(flat.transform_teacher_logits(logits), -1), torch.softmax(logits / 2, -1))

    top = instantiate("teacher-smoothing", {"mode": "top_k", "temperature": 2.0, "top_k": 3})
    probs = torch.softmax(top.transform_teacher_logits(logits), -1)
    values, indices = logits.topk(3, dim=-1)
    assert ((probs > 0).sum(-1) == 3).all()
    assert torch.allclose(probs.gather(-1, indices), torch.softmax(values, -1))
    assert torch.isfinite(torch.log_softmax(top.transform_teacher_logits(logits), -1)).all()
    with pytest.raises(KdbenchError, match="sft"):
        top.check(None, "sft")


# --- end to end --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_defense_on_the_tiny_task(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main, ["run", "--task", str(TINY_TASK), "--distiller", "kd", "--defense", "all", "--attack", "loss,mink",
               "--out", str(out)],
        env={"KDBENCH_CACHE_DIR": str(cache_dir), "COLUMNS": "200"}, catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "Defenses vs. no defense" in result.output
    defended = set(get_registry().names("defenses")) - {"none"}
    deltas = json.loads((out / "deltas.json").read_text())["deltas"]
    assert {d["defense"] for d in deltas} == defended
    for d in deltas:
        assert d["delta_auc_ci"][0] <= d["delta_auc"] <= d["delta_auc_ci"][1]
        assert d["delta_rouge_l_ci"][0] <= d["delta_rouge_l"] <= d["delta_rouge_l_ci"][1]
        assert d["utility_ci"] == "paired bootstrap"
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    students = {r["defense"]: r for r in records if r["target"] == "student"}
    assert set(students) == defended | {"none"}
    assert all(set(r["defense_params"]) == {r["defense"]} for r in students.values())
    assert 0 < students["dp-sgd"]["defense_report"]["dp-sgd"]["epsilon_spent"] <= 8.0
    assert set(students["ensemble"]["defense_report"]["ensemble"]["vote"]) == {"loss", "mink"}
    assert students["nonvulnerable"]["defense_report"]["nonvulnerable"]["n_distillation"] == 40
