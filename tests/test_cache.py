"""The artifact cache never trusts a half-written artifact and builds each one once, across processes."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from kdbench.core.cache import ArtifactCache, atomic_write_text


def test_build_then_hit(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    calls = []

    def build(d: Path) -> None:
        calls.append(d)
        (d / "x.txt").write_text("1")

    first = cache.get_or_build("thing", {"a": 1}, build)
    second = cache.get_or_build("thing", {"a": 1}, build)
    assert first == second and len(calls) == 1 and (first / "x.txt").read_text() == "1"
    assert cache.builds == [f"thing/{first.name[:12]}"] and cache.hits == [f"thing/{first.name[:12]}"]
    assert cache.get_or_build("thing", {"a": 2}, build) != first


def test_failed_build_leaves_nothing(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)

    def fail(d: Path) -> None:
        (d / "partial.bin").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cache.get_or_build("thing", {"a": 1}, fail)
    assert not cache.is_complete("thing", {"a": 1})
    assert list((tmp_path / "thing").iterdir()) == []


def test_incomplete_leftover_is_rebuilt_not_trusted(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path)
    leftover = cache.location("thing", {"a": 1})
    leftover.mkdir(parents=True)
    (leftover / "x.txt").write_text("stale")  # no spec.json: an interrupted build
    path = cache.get_or_build("thing", {"a": 1}, lambda d: (d / "x.txt").write_text("fresh"))
    assert (path / "x.txt").read_text() == "fresh"


def _slow_build(root: str, marker: str) -> None:
    def build(d: Path) -> None:
        with open(marker, "a") as f:
            f.write("built\n")
        time.sleep(0.5)
        (d / "x.txt").write_text("1")

    ArtifactCache(Path(root)).get_or_build("thing", {"a": 1}, build)


def test_two_processes_build_once(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_slow_build, args=(str(tmp_path / "c"), str(marker))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert marker.read_text().count("built") == 1


def test_atomic_write_text(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["f.json"]
