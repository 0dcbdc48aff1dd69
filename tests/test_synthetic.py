"""The synthetic-pii generator: deterministic, balanced, unique, and people recur across records."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from kdbench.core.data import Example, content_hash, content_key
from kdbench.tasks import synthetic
from kdbench.tasks.synthetic import CATEGORIES, GENERATOR_VERSION, generate

MEMORY_CATEGORIES = {"open_qa", "brainstorming", "creative_writing"}
PHONE = re.compile(r"\b\d{3}-\d{3}-\d{4}\b")
EMAIL = re.compile(r"[\w.]+@[\w.]*\w")

# content_hash(generate(0, 50, 200)); when it changes on purpose, bump GENERATOR_VERSION and update both.
GOLDEN = ("2", "c7193eee2f72f0eb96425b619fa3fa362ebe2135ebff94385b341185e3d8d943")


@pytest.fixture(scope="module")
def big() -> list[Example]:
    return generate(0, 300, 3000)


def names_in(example: Example, names: list[str]) -> set[str]:
    text = " ".join((example.instruction, example.context, example.response))
    return {name for name in names if re.search(rf"\b{re.escape(name)}\b", text)}


def test_categories_are_dollys() -> None:
    assert CATEGORIES == ("closed_qa", "information_extraction", "summarization", "classification", "open_qa",
                          "brainstorming", "creative_writing")


def test_deterministic_and_seed_dependent() -> None:
    assert generate(0, 50, 200) == generate(0, 50, 200)
    assert generate(0, 50, 200) != generate(1, 50, 200)


def test_output_is_pinned() -> None:
    """Guards GENERATOR_VERSION: silent output changes would break published split manifests."""
    assert (GENERATOR_VERSION, content_hash(generate(0, 50, 200))) == GOLDEN


@pytest.mark.parametrize("n", [0, 1, 7, 123])
def test_exact_count_and_ids(n: int) -> None:
    records = generate(3, 10, n)
    assert len(records) == n
    assert [r.id for r in records] == [f"spii-{i:05d}" for i in range(n)]


def test_all_categories_present_and_balanced(big: list[Example]) -> None:
    counts = Counter(r.category for r in big)
    assert set(counts) == set(CATEGORIES)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_content_keys_unique(big: list[Example]) -> None:
    assert len({content_key(r) for r in big}) == len(big)


def test_tiny_population_still_unique() -> None:
    records = generate(5, 1, 400)
    assert len({content_key(r) for r in records}) == 400


def test_collision_is_regenerated(monkeypatch: pytest.MonkeyPatch) -> None:
    real = synthetic._record
    calls = Counter[str]()

    def colliding(rng: random.Random, index: int, *args: object) -> Example:
        calls["n"] += 1
        if calls["n"] <= 2:  # the first two draws have the same content
            return Example(id=f"spii-{index:05d}", instruction="same", context="", response="same",
                           category="open_qa")
        return real(rng, index, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(synthetic, "_record", colliding)
    records = generate(0, 5, 20)
    assert len(records) == 20
    assert len({content_key(r) for r in records}) == 20
    assert calls["n"] == 21


def test_context_empty_exactly_for_memorisation(big: list[Example]) -> None:
    for r in big:
        assert (r.context == "") == (r.category in MEMORY_CATEGORIES), r


def test_lengths_and_ascii(big: list[Example]) -> None:
    for r in big:
        assert 5 <= len(r.instruction.split()) <= 25, r
        assert 12 <= len(r.response.split()) <= 60, r
        assert r.context == "" or 25 <= len(r.context.split()) <= 80, r
        assert all(part.isascii() for part in (r.instruction, r.context, r.response)), r


def test_contact_data_is_fictional(big: list[Example]) -> None:
    text = " ".join(r.context + " " + r.response for r in big)
    phones, emails = PHONE.findall(text), EMAIL.findall(text)
    assert phones and emails
    assert all(re.fullmatch(r"\d{3}-555-01\d\d", phone) for phone in phones)
    assert all(re.search(r"@(\w+\.example|example\.(org|com|net))$", email) for email in emails)


def test_context_answers_are_in_the_context(big: list[Example]) -> None:
    """Learnable categories: every email and digit run in the response is copied from the context."""
    for r in (r for r in big if r.category not in MEMORY_CATEGORIES):
        assert set(re.findall(r"\d+", r.response)) <= set(re.findall(r"\d+", r.context)), r
        assert set(EMAIL.findall(r.response)) <= set(EMAIL.findall(r.context)), r


def test_people_recur_one_person_per_record() -> None:
    records = generate(0, 50, 500)
    names = [p.name for p in synthetic._population(random.Random(0), 50)]
    assert len(set(names)) == 50
    owners: Counter[str] = Counter()
    for r in records:
        found = names_in(r, names)
        assert len(found) == 1, (found, r)
        owners.update(found)
    assert len(owners) <= 50 < len(records) // 5
    assert min(owners.values()) >= 5
    # the same person shows up both where facts are given and where they must be remembered
    by_name = {name: {r.category in MEMORY_CATEGORIES for r in records if name in names_in(r, [name])}
               for name in names}
    assert sum(kinds == {True, False} for kinds in by_name.values()) >= 40


def test_names_unique_in_large_population() -> None:
    people = synthetic._population(random.Random(7), 5000)
    assert len({p.name for p in people}) == 5000


def test_same_person_category_records_differ_in_template() -> None:
    """A person's records in one category use different templates while unused ones remain."""
    records = generate(2, 5, 5 * 7 * 3)
    names = [p.name for p in synthetic._population(random.Random(2), 5)]
    instructions: dict[tuple[str, str], list[str]] = {}
    for r in records:
        (name,) = names_in(r, names)
        shape = re.sub(r"\d+", "#", r.instruction.replace(name, "X"))
        instructions.setdefault((name, r.category), []).append(shape)
    for (_, category), shapes in instructions.items():
        if category in MEMORY_CATEGORIES and len(shapes) <= 4:
            assert len(set(shapes)) == len(shapes), (category, shapes)


def test_category_filter() -> None:
    records = generate(0, 20, 90, categories=["summarization", "open_qa"])
    counts = Counter(r.category for r in records)
    assert counts == {"summarization": 45, "open_qa": 45}
    assert records == generate(0, 20, 90, categories=["open_qa", "summarization"])
    assert {r.category for r in generate(0, 20, 10, categories="brainstorming")} == {"brainstorming"}


def test_filtered_task_shares_the_population() -> None:
    names = [p.name for p in synthetic._population(random.Random(4), 30)]
    for r in generate(4, 30, 60, categories=["creative_writing"]):
        assert len(names_in(r, names)) == 1, r


def test_bad_category_names_it_and_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="nonsense") as info:
        generate(0, 10, 10, categories=["open_qa", "nonsense"])
    assert all(category in str(info.value) for category in CATEGORIES)
    with pytest.raises(ValueError):
        generate(0, 10, 10, categories=[])


@pytest.mark.parametrize(("n_people", "n_records"), [(0, 10), (-1, 10), (10, -1)])
def test_bad_sizes(n_people: int, n_records: int) -> None:
    with pytest.raises(ValueError):
        generate(0, n_people, n_records)


def test_every_response_opens_with_an_aside_of_its_own(big: list[Example]) -> None:
    """The aside is what only a model that saw the record can reproduce: nearly every record has its own, and
    the asides differ in length (a wrong guess misaligns the tokens after it, METHODS.md §5)."""
    aside = re.compile(r"^([A-Z][^,]*) at the ([A-Z][a-z]+(?: [A-Z][a-z]+)?) office, ([^(]+) "
                       r"\(((?:[A-Z]\.){1,3})\): \S")
    found = [aside.match(r.response) for r in big]
    assert all(found), [r.response for r, m in zip(big, found, strict=True) if not m][:3]
    openings = Counter(m.group(0)[:-2] for m in found if m)
    assert len(openings) >= 0.95 * len(big)
    assert len({len(m.group(0).split()) for m in found if m}) >= 5
