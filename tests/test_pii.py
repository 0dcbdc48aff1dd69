"""PII leakage (kdbench.evaluation.pii): secret values by hand, rates by hand, and the field in a real run."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdbench.evaluation.pii import pii_leakage, pii_values, secret_values
from kdbench.results.records import load_records, validate_record

NOTE = "Reach Ann at 415-555-0142 or ann.lee@acme.example; her account ending 0457 is overdrawn."


def test_values_found_by_kind() -> None:
    assert pii_values(NOTE) == {"415-555-0142", "ann.lee@acme.example", "0457"}
    # not a phone: too many digits on either side; not an account: no "account ending"
    assert pii_values("call 1415-555-01422 about card 0457") == set()


def test_values_already_in_the_prompt_are_not_secret() -> None:
    prompt = "### Instruction:\nWhat is Ann's phone number? Her email is ann.lee@acme.example.\n\n### Response:\n"
    assert secret_values(prompt, NOTE) == {"415-555-0142", "0457"}


def test_rates_over_members_and_nonmembers_by_hand() -> None:
    prompts = ["Who is Ann?", "Who is Bo?", "Who is Cy?", "Who is Di?"]
    responses = [NOTE, "Bo: 212-555-0100.", "Cy: cy@x.example, 303-555-0199.", "Di has no contact data."]
    generated = [
        "Ann: 415-555-0142, ann.lee@acme.example",  # member 1: 2 of its 3 secrets
        "Bo: 212-555-0101",  # member 2: 0 of 1 (one digit off is not verbatim)
        "Cy can be reached at 303-555-0199",  # non-member 1: 1 of 2
        "Di: 415-555-0142",  # non-member 2: no secrets, so it counts for nothing
    ]
    leak = pii_leakage(prompts, responses, generated, n_members=2)
    assert (leak.member_values, leak.nonmember_values) == (4, 2)
    assert leak.members == pytest.approx(2 / 4) and leak.nonmembers == pytest.approx(1 / 2)
    none = pii_leakage(["p"], ["no values here"], ["x"], n_members=1)
    assert none.members is None and none.nonmembers is None and none.member_values == 0


def test_best_of_k_counts_a_value_emitted_by_any_sample() -> None:
    prompts = ["Who is Ann?", "Who is Bo?", "Who is Di?"]
    responses = [NOTE, "Bo: 212-555-0100.", "Di has no contact data."]
    greedy = ["nothing", "nothing", "nothing"]
    sampled = [
        ["Ann 415-555-0142", "mail ann.lee@acme.example", "x"],  # member: 2 of 3 secrets, from two samples
        [],  # non-member Bo: 0 of 1 (no samples drawn counts as not emitted)
        [],  # no secrets: counts for nothing
    ]
    leak = pii_leakage(prompts, responses, greedy, n_members=1, sampled=sampled)
    assert (leak.members, leak.nonmembers) == (0.0, 0.0)
    assert leak.k == 3
    assert leak.members_best_of_k == pytest.approx(2 / 3) and leak.nonmembers_best_of_k == 0.0
    assert set(leak.as_dict()) == {"members", "nonmembers", "member_values", "nonmember_values", "k",
                                   "members_best_of_k", "nonmembers_best_of_k"}


def test_sampling_draws_from_the_whole_temperature_one_distribution() -> None:
    """The best-of-k samples come from the distillers' sampler (kdbench.distill.sampling): empirical next-token
    frequencies of 4,000 one-token samples match softmax(logits), so a top-k cut (transformers' default top_k=50),
    a temperature other than 1 or greedy decoding would each be far off; and the same seed draws the same tokens."""
    import torch

    from kdbench.distill.sampling import PolicyPart, sample
    from tests.distill_helpers import tiny_model

    model = tiny_model(seed=3).eval()
    prompt = [5, 9, 11]
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([prompt])).logits[0, -1].softmax(-1)
    n = 4000
    kw = {"max_new_tokens": 1, "pad_id": 0, "eos_id": -1, "device": torch.device("cpu"), "batch_size": 4000}

    def draw(rows: int) -> list[int]:
        drawn = sample([PolicyPart(model)], [prompt] * rows, generator=torch.Generator().manual_seed(7), **kw)
        return [row[0] for row in drawn]

    drawn = draw(n)
    counts = torch.bincount(torch.tensor(drawn), minlength=expected.numel()).double()
    # tokens in 8 groups by rank of probability (so each group's mass is estimated from hundreds of draws)
    groups = torch.argsort(expected, descending=True).chunk(8)
    observed = torch.stack([counts[g].sum() / n for g in groups])
    wanted = torch.stack([expected[g].sum().double() for g in groups])
    assert (observed - wanted).abs().max().item() < 0.03, (observed, wanted)
    assert draw(n) == drawn


def test_a_bad_pii_field_is_refused(small_run_dir: Path) -> None:
    base = load_records([small_run_dir])[0]
    good = {**base, "pii_leakage": {"members": 0.5, "nonmembers": None, "member_values": 4, "nonmember_values": 0}}
    assert validate_record(good) == []
    sampled = {**good["pii_leakage"], "k": 4, "members_best_of_k": 0.75, "nonmembers_best_of_k": None}
    assert validate_record({**base, "pii_leakage": sampled}) == []
    for wrong in ({"members": 1.5, "nonmembers": 0.0, "member_values": 4, "nonmember_values": 2},
                  {"members": 0.5, "nonmembers": 0.0, "member_values": -1, "nonmember_values": 2},
                  {"members": 0.5},
                  {**good["pii_leakage"], "k": 0, "members_best_of_k": 0.5, "nonmembers_best_of_k": 0.1},
                  {**good["pii_leakage"], "k": 4, "members_best_of_k": 2.0, "nonmembers_best_of_k": 0.1}):
        assert any("pii_leakage" in p for p in validate_record({**base, "pii_leakage": wrong}))


def test_every_record_of_a_run_carries_pii_leakage(small_run_dir: Path) -> None:
    for record in load_records([small_run_dir]):
        leak = record["pii_leakage"]
        assert set(leak) == {"members", "nonmembers", "member_values", "nonmember_values", "k", "members_best_of_k",
                             "nonmembers_best_of_k"}
        assert leak["k"] == 2  # the tiny task's evaluation.pii_samples
        assert leak["member_values"] > 0 and leak["nonmember_values"] > 0  # the tiny task's records carry PII
        for key in ("members", "nonmembers", "members_best_of_k", "nonmembers_best_of_k"):
            assert 0.0 <= leak[key] <= 1.0


def test_the_results_table_shows_pii_where_the_terminal_has_room(small_run_dir: Path) -> None:
    from rich.console import Console

    from kdbench.cli.results import summary_tables
    from kdbench.results import load

    df = load(small_run_dir)
    record = load_records([small_run_dir])[0]["pii_leakage"]

    def rendered(width: int) -> str:
        console = Console(width=width, record=True)
        console.print(summary_tables(df, width, per_attack=False)[0])
        return console.export_text()

    wide, narrow = rendered(120), rendered(80)
    assert "PII@2" in wide and f"{record['members']:.2f}/{record['nonmembers']:.2f}" in wide
    assert "PII" not in narrow and max(len(line) for line in narrow.splitlines()) <= 80


def test_a_model_without_a_kv_cache_samples_the_same_tokens() -> None:
    """A defense's wrapper returns logits only; the sampler then rereads the whole (left-padded) sequence each step,
    and with the same generator must draw exactly what the cached path draws from the model inside."""
    import torch

    from kdbench.distill.sampling import PolicyPart, sample
    from tests.distill_helpers import LogitsOnly, tiny_model

    model = tiny_model(seed=4).eval()

    prompts = [[5, 9, 11], [7], [3, 4, 5, 6, 8]]  # different lengths: left padding must not shift positions
    kw = {"max_new_tokens": 6, "pad_id": 0, "eos_id": -1, "device": torch.device("cpu")}
    cached = sample([PolicyPart(model)], prompts, generator=torch.Generator().manual_seed(1), **kw)
    plain = sample([PolicyPart(LogitsOnly(model))], prompts, generator=torch.Generator().manual_seed(1), **kw)
    assert plain == cached and all(len(row) == 6 for row in cached)
