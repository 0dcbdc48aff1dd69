"""The published leaderboard, as CI and the Pages workflow build it: from `leaderboard/results/` alone, checked
page by page in real headless Chromium (no console error, charts/tables drawn, every link resolves)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest

from kdbench.leaderboard.site import build_site
from tests.test_leaderboard_browser import driver  # noqa: F401 - the real-browser fixture

pytestmark = pytest.mark.browser

RESULTS = Path(__file__).resolve().parent.parent / "leaderboard" / "results" / "results.jsonl"


def _local_links(page: Path, browser: Any) -> list[Path]:
    targets = []
    for anchor in browser.find_elements("css selector", "a[href]"):
        url = urlparse(anchor.get_attribute("href"))
        if url.scheme == "file":
            targets.append(Path(unquote(url.path)))
    return targets


def test_published_site_builds_from_the_committed_records_and_renders(tmp_path: Path, driver: Any) -> None:  # noqa: F811
    if not RESULTS.exists():
        pytest.skip(f"{RESULTS} is not committed yet: run `kdbench leaderboard reproduce` to publish")
    site = tmp_path / "site"
    report = build_site([RESULTS], site)
    assert report.boards >= 1 and report.entries >= 1
    pages = sorted(site.rglob("*.html"))
    assert len(pages) == report.pages
    task_pages = 0
    for page in pages:
        driver.get(page.as_uri())
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == [], f"{page.relative_to(site)}: {severe}"
        for target in _local_links(page, driver):
            assert target.exists(), f"{page.relative_to(site)} links to missing {target}"
        if driver.find_elements("css selector", "table.ranking"):
            task_pages += 1
            assert driver.find_elements("css selector", "table.ranking tbody tr")
            assert driver.find_elements("css selector", "svg.chart circle.mark"), f"{page}: no frontier plot"
            assert driver.find_elements("css selector", "table.heat td"), f"{page}: no heat map"
            text = driver.find_element("css selector", "body").text
            if "dolly" in page.parent.name:
                assert "CC BY-SA 3.0" in text, f"{page}: Dolly page without its attribution"
    assert task_pages == report.boards
