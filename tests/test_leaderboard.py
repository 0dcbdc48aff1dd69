"""`kdbench leaderboard build|add|serve`: pages, escaping, refusal of bad contributions, appending."""

from __future__ import annotations

import json
import re
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from kdbench.cli import main
from kdbench.cli.leaderboard import make_server
from kdbench.leaderboard.ranking import group_cells
from kdbench.leaderboard.site import resource_root, slug, strip_member_text, variant_labels
from kdbench.results.records import load_records
from tests.helpers import make_record

XSS = "<script>alert(1)</script>"
XSS_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def grid() -> list[dict[str, Any]]:
    """Teacher, baseline and three students under two attacks and two seeds."""
    records = []
    for seed in (0, 1):
        for attack, bump in (("loss", 0.0), ("mink", 0.02)):
            records.append(
                make_record(None, None, target="teacher", attack=attack, auc=0.9 + bump, rouge=30, seed=seed)
            )
            records.append(
                make_record(None, None, target="baseline", attack=attack, auc=0.5 + bump, rouge=18, seed=seed)
            )
            for name, auc, rouge in (("kd", 0.6, 24.0), ("seqkd", 0.7, 26.0), ("minillm", 0.55, 20.0)):
                records.append(make_record(name, "none", attack=attack, auc=auc + bump, rouge=rouge, seed=seed))
    return records


def by_metric(page: str, metric: str) -> str:
    """The part of a task page that shows the ranking by ``metric`` (its chart and table)."""
    start = page.index(f'<div class="by-metric" data-metric="{metric}"')
    return page[start : page.index("</table>", start)]


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, ["leaderboard", *args])


def pages(site: Path) -> dict[str, str]:
    return {str(p.relative_to(site)): p.read_text(encoding="utf-8") for p in site.rglob("*.html")}


@pytest.fixture
def site(tmp_path: Path) -> Path:
    results = write_jsonl(tmp_path / "results.jsonl", grid())
    result = invoke("build", str(results), "--out", str(tmp_path / "site"))
    assert result.exit_code == 0, result.output
    return tmp_path / "site"


# --------------------------------------------------------------------------------------------- build


def test_build_writes_index_task_and_entry_pages(site: Path) -> None:
    html = pages(site)
    assert "index.html" in html and "synthetic-pii/index.html" in html
    entries = [name for name in html if name.startswith("synthetic-pii/entries/")]
    assert len(entries) == 3  # one per student cell; teacher and baseline are reference points
    task = html["synthetic-pii/index.html"]
    by_auc = by_metric(task, "auc")
    assert by_auc.count('class="frontier-row"') == 3  # the three students trade off on AUC: all on the frontier
    assert "<svg" in task and 'table class="heat"' in task and "sortable" in task
    assert len(load_records([site / "results.jsonl"])) == len(grid())


def test_pages_are_self_contained(site: Path) -> None:
    for name, html in pages(site).items():
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), name
        assert '<link rel="stylesheet"' not in html and "<script src" not in html, name
        assert "Content-Security-Policy" in html and "<style>" in html and "addEventListener" in html, name


def test_entry_page_shows_attacks_roc_memorization_blocks_and_provenance(site: Path) -> None:
    entry = next(html for name, html in pages(site).items() if "--seqkd--" in name)
    for text in (
        "ROC curves",
        "Memorization",
        "Per-block privacy risk",
        "split_hashes",
        "packages",
        "run-1",
        "mink",
        "loss",
        "0.720",
    ):  # seqkd's strongest attack: mink at 0.70 + 0.02
        assert text in entry, text


def test_plugin_supplied_text_is_escaped_everywhere(tmp_path: Path) -> None:
    records = [
        *grid(),
        make_record(
            XSS,
            XSS,
            attack=XSS,
            distiller_params={"description": XSS},
            provenance={"note": XSS, "per_block_auc": [0.5]},
        ),
    ]
    results = write_jsonl(tmp_path / "results.jsonl", records)
    assert invoke("build", str(results), "--out", str(tmp_path / "site")).exit_code == 0
    html = pages(tmp_path / "site")
    assert all("<script>alert(1)" not in page for page in html.values())
    assert XSS_ESCAPED in html["synthetic-pii/index.html"]
    # The XSS student's own page (the others name its attack too, as one they lack).
    entry = max((page for name, page in html.items() if "entries/" in name), key=lambda p: p.count(XSS_ESCAPED))
    assert entry.count(XSS_ESCAPED) >= 4  # heading, parameters, attack table, provenance


def test_later_record_with_the_same_key_replaces_the_earlier(tmp_path: Path) -> None:
    records = [*grid(), make_record("kd", "none", attack="loss", auc=0.93, seed=0)]
    results = write_jsonl(tmp_path / "results.jsonl", records)
    result = invoke("build", str(results), "--out", str(tmp_path / "site"))
    assert result.exit_code == 0, result.output
    assert "dropped 0 identical, replaced 1" in result.output
    merged = load_records([tmp_path / "site" / "results.jsonl"])
    assert len(merged) == len(grid())
    assert max(r["auc"] for r in merged if r["distiller"] == "kd") == 0.93


def test_blind_reference_is_shown_but_never_ranked(tmp_path: Path) -> None:
    """A blind record with the highest AUC of all: the ranking still takes kd's strongest attack (mink, 0.62), and
    the task page states blind's AUC, its interval over the two seeds (the envelope of [0.93, 1] and
    [0.85, 0.95], as stats.seed_interval takes two seeds; not the mean of the CIs) and its seed count (once per
    seed, not per target)."""
    blind = [make_record(d, f, target=t, attack="blind", auc=a, seed=0, reference=True)
             for t, d, f, a in (("teacher", None, None, 0.98), ("student", "kd", "none", 0.98))]
    blind.append(make_record("kd", "none", attack="blind", auc=0.9, seed=1, reference=True))
    results = write_jsonl(tmp_path / "results.jsonl", [*grid(), *blind])
    result = invoke("build", str(results), "--out", str(tmp_path / "site"))
    assert result.exit_code == 0, result.output
    task = pages(tmp_path / "site")["synthetic-pii/index.html"]
    row = task[task.index('<tr class="shift">') : task.index("</tr>", task.index('<tr class="shift">'))]
    cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
    assert cells == ["blind (distribution shift)", "no model", "—", "0.940 [0.850, 1.000]", "blind", "0.020", "2"]
    assert "risk AUC 0.620 [0.570, 0.670] (mink)" in task
    entries = [text for name, text in pages(tmp_path / "site").items() if "entries" in name]
    assert len(entries) == 3 and not any("blind" in text for text in entries)


def test_a_defended_entry_shows_its_cost_against_the_same_distiller_undefended(tmp_path: Path) -> None:
    """kd + dp-sgd against kd with no defense (grid(): ROUGE-L 24, risk mink 0.62, TPR 0.02): by hand,
    ROUGE-L 21.5 - 24 = -2.50; AUC risk max(0.55, 0.53) - 0.62 = -0.070; TPR risk 0.01 - 0.02 = -0.010. Undefended
    entries show no cost, and a defended entry whose distiller has no undefended cell on the board shows none
    (gkd + dp-sgd: there is no gkd / none). Runs record the undefended cells' parameters as {"none": {}}."""
    defended = [
        make_record(name, "dp-sgd", attack=attack, auc=auc, rouge=21.5, seed=seed, tpr_at_1pct_fpr=0.01,
                    defense_params={"dp-sgd": {"epsilon": 8.0}}, defense_report={"dp-sgd": {"epsilon_spent": 7.93}})
        for seed in (0, 1) for attack, auc in (("loss", 0.55), ("mink", 0.53)) for name in ("kd", "gkd")
    ]
    undefended = [dict(r, defense_params={"none": {}}) if r["defense"] == "none" else r for r in grid()]  # as runs
    results = write_jsonl(tmp_path / "results.jsonl", [*undefended, *defended])
    assert invoke("build", str(results), "--out", str(tmp_path / "site")).exit_code == 0
    task = pages(tmp_path / "site")["synthetic-pii/index.html"]
    costs = {}
    for metric in ("auc", "tpr"):
        table = by_metric(task, metric)
        headers = [re.sub(r"<[^>]+>", "", h).strip() for h in re.findall(r"<th[^>]*>(.*?)</th>", table, re.S)]
        column = headers.index("Defense cost")
        for row in re.findall(r"<tr data-entry.*?</tr>", table, re.S):
            cells = [re.sub(r"<[^>]+>", " ", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            name = " / ".join(cells[2].split()[:1] + cells[3].split()[:1])
            costs[metric, name] = " ".join(cells[column].split())
    assert costs["auc", "kd / dp-sgd"] == "ROUGE-L \u22122.50 AUC \u22120.070"
    assert costs["tpr", "kd / dp-sgd"] == "ROUGE-L \u22122.50 TPR@1%FPR \u22120.010"
    assert costs["auc", "kd / none"] == costs["auc", "gkd / dp-sgd"] == "—"
    site_pages = pages(tmp_path / "site")
    entry = next(text for name, text in site_pages.items() if "--kd--dp-sgd-" in name)
    plain = next(name for name in site_pages if "--kd--none-" in name).split("/", 1)[1]  # entries/<file>
    prose = " ".join(re.sub(r"<[^>]+>", "", entry[entry.index("The defense's cost") :]).split())
    assert "ROUGE-L \u22122.50; risk by AUC \u22120.070; risk by TPR@1%FPR \u22120.010." in prose
    assert f'href="../{plain}"' in entry and "epsilon_spent" in entry
    lone = next(text for name, text in site_pages.items() if "--gkd--dp-sgd-" in name)
    assert "No undefended entry" in lone


def test_variants_are_labelled_by_the_parameters_that_differ_without_their_defense_prefix() -> None:
    """Two DP-SGD budgets of kd read "epsilon=1.0" / "epsilon=8.0" (the entry already says dp-sgd); two kd
    temperatures keep the ``distiller_params.`` prefix (nothing in the name says which component owns it); a
    name with one variant gets no label."""
    records = [
        make_record("kd", "dp-sgd", defense_params={"dp-sgd": {"epsilon": 1.0, "max_grad_norm": 1.0}}),
        make_record("kd", "dp-sgd", defense_params={"dp-sgd": {"epsilon": 8.0, "max_grad_norm": 1.0}}),
        make_record("kd", "none", distiller_params={"temperature": 1.0}),
        make_record("kd", "none", distiller_params={"temperature": 2.0}),
        make_record("gkd", "none"),
    ]
    labels = sorted(variant_labels(group_cells(records)).values())
    assert labels == ["", "distiller_params.temperature=1.0", "distiller_params.temperature=2.0", "epsilon=1.0",
                      "epsilon=8.0"]


def test_rebuild_replaces_a_previous_site_but_not_a_foreign_directory(site: Path, tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    assert invoke("build", str(results), "--out", str(site)).exit_code == 0
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    result = invoke("build", str(results), "--out", str(foreign))
    assert result.exit_code != 0 and "not a kdbench leaderboard site" in result.output
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_member_text_is_omitted_unless_asked_for(tmp_path: Path) -> None:
    secret = "Jane Roe, born 1970-01-01, diagnosis"
    records = [*grid(), make_record("kd", "secret", examples=[secret], provenance={"samples": [secret]})]
    results = write_jsonl(tmp_path / "results.jsonl", records)
    result = invoke("build", str(results), "--out", str(tmp_path / "site"))
    assert result.exit_code == 0 and "Omitted 2 member-text" in result.output
    everything = (
        "".join(pages(tmp_path / "site").values()) + (tmp_path / "site" / "results.jsonl").read_text()
    )
    assert secret not in everything
    assert (
        invoke("build", str(results), "--out", str(tmp_path / "with"), "--include-member-text").exit_code == 0
    )
    assert secret in "".join(pages(tmp_path / "with").values())


def test_strip_member_text_reaches_nested_fields() -> None:
    assert strip_member_text({"a": [{"samples": 1, "b": 2}], "examples": 3}) == ({"a": [{"b": 2}]}, 2)


# --------------------------------------------------------------------------------------------- refusal


def _bad_json(good: str) -> str:
    return good + '{"run_id": "x", "auc": \n'


def _missing_field(good: str) -> str:
    bad = json.loads(good.splitlines()[0])
    del bad["auc"]
    return good + json.dumps(bad) + "\n"


def _auc_out_of_range(good: str) -> str:
    bad = json.loads(good.splitlines()[0])
    bad["auc"] = 1.5
    return good + json.dumps(bad) + "\n"


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (_bad_json, "not valid JSON"),
        (_missing_field, "missing field 'auc'"),
        (_auc_out_of_range, "outside [0, 1]"),
    ],
)
@pytest.mark.parametrize("command", ["build", "add"])
def test_malformed_results_are_refused_with_file_and_line(
    tmp_path: Path, corrupt: Any, reason: str, command: str
) -> None:
    good = "".join(json.dumps(r) + "\n" for r in grid()[:3])
    bad = tmp_path / "contribution.jsonl"
    bad.write_text(corrupt(good), encoding="utf-8")
    target = (
        ["--out", str(tmp_path / "site")] if command == "build" else ["--into", str(tmp_path / "lb.jsonl")]
    )
    result = invoke(command, str(bad), *target)
    assert result.exit_code != 0
    assert f"{bad}:4" in result.output and reason in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "site").exists() and not (tmp_path / "lb.jsonl").exists()


def test_missing_and_empty_inputs_are_refused(tmp_path: Path) -> None:
    result = invoke("build", str(tmp_path / "nope"), "--out", str(tmp_path / "site"))
    assert result.exit_code != 0 and "no such file" in result.output
    (tmp_path / "empty.jsonl").write_text("")
    result = invoke("build", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "site"))
    assert result.exit_code != 0 and "No results records" in result.output


# --------------------------------------------------------------------------------------------- add


def test_add_appends_new_records_and_skips_duplicates(tmp_path: Path) -> None:
    into = tmp_path / "leaderboard.jsonl"
    first = write_jsonl(tmp_path / "first.jsonl", grid()[:10])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_jsonl(run_dir / "results.jsonl", grid()[5:])  # overlaps the first contribution by five
    result = invoke("add", str(first), "--into", str(into))
    assert result.exit_code == 0 and "Added 10 record(s)" in result.output
    result = invoke("add", str(run_dir), str(first), "--into", str(into))
    assert result.exit_code == 0, result.output
    assert (
        f"Added {len(grid()) - 10} record(s)" in result.output and f"{len(grid())} in total" in result.output
    )
    assert load_records([into]) == grid()
    again = invoke("add", str(first), "--into", str(into))
    assert "Added 0 record(s)" in again.output and "skipped 10 duplicate(s)" in again.output
    assert not [
        p for p in tmp_path.iterdir() if p.name.startswith(".leaderboard.jsonl")
    ]  # no temp files left


def test_add_refuses_when_the_target_directory_is_missing(tmp_path: Path) -> None:
    results = write_jsonl(tmp_path / "r.jsonl", grid()[:1])
    result = invoke("add", str(results), "--into", str(tmp_path / "missing" / "results.jsonl"))
    assert result.exit_code != 0 and "--into" in result.output


# --------------------------------------------------------------------------------------------- serve


def test_serve_previews_the_site_over_http(site: Path) -> None:
    server = make_server(site, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/synthetic-pii/index.html", timeout=10
        ) as response:
            assert response.status == 200 and b"Privacy" in response.read()
    finally:
        server.shutdown()
        server.server_close()


def test_serve_refuses_a_directory_without_a_site(tmp_path: Path) -> None:
    result = invoke("serve", str(tmp_path))
    assert result.exit_code != 0 and "build a site first" in result.output


def test_templates_are_found_from_the_source_tree_or_the_package() -> None:
    root = resource_root()
    assert (root / "templates" / "base.html").is_file() and (root / "static" / "site.js").is_file()


def test_slugs_are_safe_and_never_clash_with_the_site_files() -> None:
    assert slug("synthetic-pii") == "synthetic-pii"
    for name in ("index.html", "results.jsonl", "entries", "../../etc", "a/b", "KD", ""):
        made = slug(name)
        assert made != name and "/" not in made and not made.startswith(".")
    assert slug("a b") != slug("a-b")


# --------------------------------------------------------------------------------------------- like with like


def test_build_states_the_rule_and_marks_what_does_not_compare(tmp_path: Path) -> None:
    """Common attack set, missing attacks, unusable entries and sft as a reference, on the page and in the output."""
    records = [
        *grid(),
        make_record("kd", "dp-sgd", attack="loss", auc=0.5, rouge=0.0),  # no mink, no utility
        make_record("sft", "none", attack="loss", auc=0.5, rouge=18.0),
        make_record("sft", "none", attack="mink", auc=0.52, rouge=18.0),
    ]
    results = write_jsonl(tmp_path / "results.jsonl", records)
    result = invoke("build", str(results), "--out", str(tmp_path / "site"))
    assert result.exit_code == 0, result.output
    assert "lack mink and are ranked on the common attacks only" in result.output
    assert "kdbench run --task synthetic-pii --distiller kd --defense dp-sgd --attack mink --seed 0" in result.output
    assert "1 entr(y/ies) below the utility floor" in result.output
    html = pages(tmp_path / "site")
    task = html["synthetic-pii/index.html"]
    assert "common attack set" in task and "<strong>loss</strong>" in task  # the set the ranking uses
    assert "Utility floor." in task and "<strong>9.00</strong>" in task  # 50% of the baseline's 18
    table = by_metric(task, "auc")
    assert table.count('class="badge unusable"') == 1 and '<span class="missing"' in table
    assert table.count("<tr data-entry=") == 4  # kd, seqkd, minillm, kd/dp-sgd; sft is a reference
    assert "sft / none" in task.split("Reference points")[1].split("</table>")[0]
    heat = task[task.index('table class="heat"') :]
    assert ">mink ●<" not in heat and ">mink<" in heat  # every attack kept in the heat map, mink not common
    entry = next(page for name, page in html.items() if "--kd--dp-sgd" in name)
    assert "Unusable at this setting" in entry and "This entry lacks mink" in entry


def test_rank_by_switch_and_option(tmp_path: Path) -> None:
    results = write_jsonl(tmp_path / "results.jsonl", grid())
    assert invoke("build", str(results), "--out", str(tmp_path / "auc")).exit_code == 0
    assert invoke("build", str(results), "--out", str(tmp_path / "tpr"), "--rank-by", "tpr").exit_code == 0
    auc, tpr = (pages(tmp_path / name)["synthetic-pii/index.html"] for name in ("auc", "tpr"))
    for page, shown, hidden in ((auc, "auc", "tpr"), (tpr, "tpr", "auc")):
        assert f'<div class="by-metric" data-metric="{shown}">' in page
        assert f'<div class="by-metric" data-metric="{hidden}" hidden>' in page
        assert f'data-metric="{shown}" aria-pressed="true"' in page
    assert "Risk TPR@1%FPR" in by_metric(auc, "tpr")
    assert invoke("build", str(results), "--out", str(tmp_path / "x"), "--rank-by", "bleu").exit_code != 0


def test_a_seed_in_two_runs_counts_once_and_conflicts_stop_the_build(tmp_path: Path) -> None:
    one_seed = [r for r in grid() if r["seed"] == 0]
    first = write_jsonl(tmp_path / "a.jsonl", one_seed)
    second = write_jsonl(tmp_path / "b.jsonl", [{**r, "run_id": "run-again"} for r in one_seed])
    result = invoke("build", str(first), str(second), "--out", str(tmp_path / "site"))
    assert result.exit_code == 0, result.output
    assert "5 seed(s) of a configuration appear in several runs" in result.output  # teacher, baseline, 3 students
    table = by_metric(pages(tmp_path / "site")["synthetic-pii/index.html"], "auc")
    assert re.findall(r'data-sort="(\d+)">\d+</td>\s*</tr>', table) == ["1", "1", "1"]  # the Seeds column
    clash = write_jsonl(tmp_path / "c.jsonl", [{**one_seed[0], "run_id": "run-clash", "auc": 0.99}])
    result = invoke("build", str(first), str(clash), "--out", str(tmp_path / "bad"))
    assert result.exit_code != 0 and "'run-0'" in result.output and "'run-clash'" in result.output
    assert not (tmp_path / "bad").exists()


def test_ranked_rows_and_entries_show_memorization_and_pii_means_over_seeds(tmp_path: Path) -> None:
    """The ranked table's Memorized and PII leaked cells are each entry's means over seeds (computed here by hand
    from the two seeds' values), with the best-of-k rate under the greedy one; the entry page lists the PII stats."""
    records = grid()
    for r in records:
        pii = (0.25, 0.5) if r["seed"] == 0 else (0.75, 1.0)
        r["pii_leakage"] = {"members": pii[0], "nonmembers": 0.0, "member_values": 4, "nonmember_values": 4,
                            "k": 8, "members_best_of_k": pii[1], "nonmembers_best_of_k": 0.0}
        if r["seed"] == 1:
            r["memorization"] = {**r["memorization"], "members": 0.3}
    results = write_jsonl(tmp_path / "results.jsonl", records)
    assert invoke("build", str(results), "--out", str(tmp_path / "site")).exit_code == 0
    html = pages(tmp_path / "site")
    row = by_metric(html["synthetic-pii/index.html"], "auc")
    row = row[row.index('data-entry="entries/'):]
    row = row[: row.index("</tr>")]
    assert '<td class="num" data-sort="0.2">0.200</td>' in row  # memorized members: (0.1 + 0.3) / 2
    assert ">0.500<" in row and "best of 8: 0.750" in row  # greedy (0.25 + 0.75) / 2, best of 8 (0.5 + 1) / 2
    entry = next(page for name, page in html.items() if "--seqkd--" in name)
    assert "PII leakage" in entry and "members_best_of_k" in entry
