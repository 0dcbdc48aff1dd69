"""Content-addressed artifact cache.

Every artifact (tokenizer, teacher, baseline, student, teacher outputs, token statistics, generations) lives in
``<root>/<kind>/<key>/`` where ``key`` hashes everything that determines it. An artifact is built in a temporary
sibling directory and renamed into place only when complete, under a per-key file lock, so an interrupted run
never leaves anything a later run would trust, and two processes never build the same artifact twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock

from kdbench.core.errors import KdbenchError

T = TypeVar("T")
ENV_VAR = "KDBENCH_CACHE_DIR"
SPEC_FILE = "spec.json"


def default_root() -> Path:
    return Path(os.environ.get(ENV_VAR) or Path.home() / ".cache" / "kdbench").expanduser()


def spec_key(spec: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``spec`` (sorted keys, no whitespace)."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass
class ArtifactCache:
    """The cache rooted at ``root``; records hits and builds so a run can report what it reused."""

    root: Path = field(default_factory=default_root)
    hits: list[str] = field(default_factory=list)
    builds: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        try:
            (self.root / "locks").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise KdbenchError(
                f"Cannot create the cache directory {self.root} ({exc.strerror}). "
                f"Point {ENV_VAR} at a writable directory."
            ) from exc

    def location(self, kind: str, spec: Mapping[str, Any]) -> Path:
        return self.root / kind / spec_key(spec)

    def is_complete(self, kind: str, spec: Mapping[str, Any]) -> bool:
        return (self.location(kind, spec) / SPEC_FILE).exists()

    def find(self, kind: str, key: str) -> Path | None:
        """The directory of a finished artifact known by its key (e.g. a record's ``model_key``), or None."""
        path = self.root / kind / key
        return path if (path / SPEC_FILE).exists() else None

    def get_or_build(self, kind: str, spec: Mapping[str, Any], build: Callable[[Path], None]) -> Path:
        """The artifact's directory, calling ``build(tmp_dir)`` first if it is not cached yet."""
        final = self.location(kind, spec)
        label = f"{kind}/{final.name[:12]}"
        if (final / SPEC_FILE).exists():
            self.hits.append(label)
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / "locks" / f"{kind}-{final.name}.lock")):
            if (final / SPEC_FILE).exists():  # another process finished it while we waited
                self.hits.append(label)
                return final
            for leftover in final.parent.glob(f".tmp-{final.name[:12]}-*"):  # a killed build of this key
                shutil.rmtree(leftover, ignore_errors=True)  # (we hold the key's lock: nobody else builds it)
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name[:12]}-", dir=final.parent))
            try:
                build(tmp)
                # The spec file is written last: its presence is what marks the artifact complete.
                (tmp / SPEC_FILE).write_text(json.dumps(spec, sort_keys=True, indent=1, default=str))
                if final.exists():  # an incomplete leftover of a killed run: never trusted, replaced
                    shutil.rmtree(final)
                os.replace(tmp, final)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        self.builds.append(label)
        return final


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see either the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_dir_atomically(out: Path, render: Callable[[Path], T]) -> T:
    """``render`` into a sibling temp directory, then swap it in for ``out`` (replacing what was there), so a
    failed or interrupted write never leaves half a directory: readers see the old one or the whole new one."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        result = render(tmp)
        os.chmod(tmp, 0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / "previous")
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old / "previous", out)  # put the previous one back
                raise
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result
