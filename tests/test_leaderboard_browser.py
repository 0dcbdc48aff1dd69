"""The leaderboard in a real browser: built from a real small run, opened from file:// in Chromium."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kdbench.leaderboard.ranking import build_boards
from kdbench.leaderboard.site import build_site, slug
from kdbench.results.records import load_records

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--window-size=1280,2000",
)


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Any]:
    """Headless Debian Chromium with a fresh profile and browser-console logging."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(
            f"needs Debian chromium and chromium-driver ({', '.join(missing)} missing; "
            "apt-get install chromium chromium-driver)"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in (*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield browser
    finally:
        browser.quit()


def _derived_student(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A second student cell, derived from the run's first one, so there is an order to change by sorting.

    Only used when the real run has a single student cell. Its numbers are shifted copies (marked in the
    distiller name and provenance), enough to exercise the table, not a measurement.
    """
    student = next(r for r in records if r["target"] == "student")
    derived = []
    for record in records:
        if record["target"] == "student" and record["distiller"] == student["distiller"]:
            copy = json.loads(json.dumps(record))
            copy["distiller"] = f"{record['distiller']}-derived-for-test"
            copy["rouge_l"] = min(100.0, record["rouge_l"] + 3.0)
            copy["rouge_l_ci"] = None
            copy["provenance"] = {**record.get("provenance", {}), "note": "derived for the browser test"}
            derived.append(copy)
    return derived


def _column(rows: list[Any], key: str) -> list[float]:
    return [
        float(row.find_element("css selector", f"td:nth-child({key})").get_attribute("data-sort"))
        for row in rows
    ]


def test_task_page_sorts_and_renders_without_console_errors(
    small_run_dir: Path, tmp_path: Path, driver: Any
) -> None:
    records = load_records([small_run_dir])
    inputs = [small_run_dir]
    if sum(1 for b in build_boards(records) for _ in b.entries) < 2:
        extra = tmp_path / "derived.jsonl"
        extra.write_text("".join(json.dumps(r) + "\n" for r in _derived_student(records)), encoding="utf-8")
        inputs.append(extra)
    site = tmp_path / "site"
    build_site(inputs, site)
    task = records[0]["task"]

    driver.get((site / slug(task) / "index.html").as_uri())
    table = driver.find_element("css selector", "table.ranking")
    rows = lambda: table.find_elements("css selector", "tbody tr")  # noqa: E731 - re-read after each sort
    assert len(rows()) >= 2
    assert driver.find_elements("css selector", "svg.chart circle.mark")  # the frontier plot drew its points
    utility_col = str(
        1
        + [h.get_attribute("data-key") for h in table.find_elements("css selector", "thead th")].index(
            "utility"
        )
    )
    header = table.find_element("css selector", 'th[data-key="utility"]')

    header.click()
    ascending_ids = [r.get_attribute("data-entry") for r in rows()]
    ascending = _column(rows(), utility_col)
    assert ascending == sorted(ascending)
    assert header.get_attribute("aria-sort") == "ascending"

    header.click()
    descending_ids = [r.get_attribute("data-entry") for r in rows()]
    descending = _column(rows(), utility_col)
    assert descending == sorted(descending, reverse=True)
    if len(set(ascending)) == len(ascending):
        assert descending_ids == ascending_ids[::-1]

    # The "Rank by" switch swaps the AUC ranking for the TPR@1%FPR one (and back).
    by_tpr = driver.find_element("css selector", 'table.ranking[data-metric="tpr"]')
    assert table.is_displayed() and not by_tpr.is_displayed()
    switch = driver.find_element("css selector", '.metric-switch button[data-metric="tpr"]')
    switch.click()
    assert by_tpr.is_displayed() and not table.is_displayed()
    assert switch.get_attribute("aria-pressed") == "true"
    tpr_rows = by_tpr.find_elements("css selector", "tbody tr")
    assert [int(r.find_element("css selector", "td").text) for r in tpr_rows] == list(range(1, len(tpr_rows) + 1))
    driver.find_element("css selector", '.metric-switch button[data-metric="auc"]').click()
    assert table.is_displayed() and not by_tpr.is_displayed()

    severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []

    screenshot = tmp_path / "task-page.png"
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1280, min(int(height) + 80, 5000))
    assert driver.save_screenshot(str(screenshot))
    data = screenshot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000
