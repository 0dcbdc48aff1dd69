"""Where a task's examples come from: the built-in generator, a Hugging Face dataset, or a local JSON/JSONL/CSV/
Parquet file.

Files and hub datasets load through ``datasets`` (its ``json``/``csv``/``parquet`` builders for local files, into
memory-mapped Arrow cached in the kdbench cache by the file's content hash; imported only when a file is read, as it
is slow to import). With a data directory (``--data-dir`` / ``KDBENCH_DATA_DIR``) nothing is downloaded: the task's
file is read from there, and a missing file is an error that says exactly which file to put where and how to get
it, because a benchmark that silently evaluates on something else is worse than one that stops.
"""

from __future__ import annotations

import csv
import inspect
import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdbench.core.cache import ENV_VAR as CACHE_ENV
from kdbench.core.cache import SPEC_FILE, atomic_write_text, default_root, spec_key
from kdbench.core.data import Example, file_sha256
from kdbench.core.errors import TaskError, UnknownNameError, unknown_name_message
from kdbench.tasks.manifest import Task
from kdbench.tasks.synthetic import GENERATOR_VERSION, generate

DATA_DIR_ENV = "KDBENCH_DATA_DIR"
# Dolly's column names; other sources map theirs in the manifest's ``fields``.
DEFAULT_FIELDS: dict[str, str] = {
    "instruction": "instruction",
    "context": "context",
    "response": "response",
    "category": "category",
}
FORMATS: dict[str, str] = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
                           ".parquet": "parquet"}
_BUILDERS = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}  # format -> `datasets` builder
DATASETS_CACHE_KIND = "datasets"  # <kdbench cache>/datasets/<key>/: the Arrow files the builders prepared


class MissingDataError(TaskError):
    """A hub task's data is neither in the data directory nor loadable from the hub: nothing to check it against."""


class PinMismatchError(TaskError):
    """The data file read is not the one the manifest pins (``source.sha256`` / ``source.rows``)."""


@dataclass(frozen=True)
class Loaded:
    """A source's examples in source order, and a record of what was read (kept in split manifests)."""

    examples: list[Example]
    origin: dict[str, Any] = field(default_factory=dict)
    location: str = ""  # the file or hub dataset, for messages; machine-specific, so not in ``origin``


def load(task: Task, data_dir: Path | None = None, check_pin: bool = True) -> Loaded:
    """All examples of ``task``'s source, mapped to Dolly's fields. With ``check_pin`` a data file that is not
    the one the manifest pins (sha256, row count) is refused (:class:`PinMismatchError`) before anything is split;
    without it (``tasks show``/``verify``, which report it) the file's own hash and row count are recorded."""
    if "generator" in task.source:
        return _generated(task)
    directory = resolve_data_dir(data_dir)
    if "hub" in task.source:
        rows, origin, location = _hub_rows(task, directory)
    else:
        rows, origin, location = _file_rows(task, directory)
    origin["rows"] = len(rows)
    mismatch = pin_mismatch(task, origin, location)
    if mismatch is None:
        origin.update(_provenance(task))
    else:
        if "file" in origin:  # a local file: record what was read, never the origin the manifest claims for another
            origin = {"kind": "file", **{k: v for k, v in origin.items() if k in ("file", "sha256", "rows")}}
        if check_pin:
            raise PinMismatchError(mismatch)
    if not rows:
        raise TaskError(f"{location}: the data file holds no rows; expected one JSON object per line with the "
                        f"columns {', '.join(sorted(set({**DEFAULT_FIELDS, **task.fields}.values())))}. "
                        + _fix(task))
    prefix = task.source.get("id_prefix", f"{task.name}-")
    mapping = {**DEFAULT_FIELDS, **task.fields}
    examples = [_to_example(row, index, mapping, prefix, task, location) for index, row in enumerate(rows)]
    return Loaded(examples, origin, location)


def resolve_data_dir(data_dir: Path | None) -> Path | None:
    """The explicit data directory, else ``$KDBENCH_DATA_DIR``, else none (hub tasks then go online); one that
    does not exist is an error here, not a "missing file" later."""
    origin = "--data-dir"
    if data_dir is None:
        from_env = os.environ.get(DATA_DIR_ENV)
        if not from_env:
            return None
        data_dir, origin = Path(from_env), f"${DATA_DIR_ENV}"
    path = Path(data_dir)
    if not path.exists():
        raise MissingDataError(
            f"{origin} {path}: no such directory or file. Pass the directory that holds the task data files (e.g. "
            "--data-dir ../shared/data from the project root), or the data file itself."
        )
    return path


# --- pins: what the data is (sha256, rows) and where it comes from ------------------------------------------------
def pin_mismatch(task: Task, origin: Mapping[str, Any], location: str) -> str | None:
    """Why the file read is not the one ``source.sha256``/``source.rows`` pin (naming both files), or None."""
    pinned_sha, pinned_rows = task.source.get("sha256"), task.source.get("rows")
    sha, rows = origin.get("sha256"), origin.get("rows")
    if (not pinned_sha or sha in (None, pinned_sha)) and (pinned_rows is None or rows in (None, pinned_rows)):
        return None
    pinned = f"sha256 {pinned_sha or '(not pinned)'}" + (f", {pinned_rows:,} rows" if pinned_rows is not None else "")
    where = describe_origin(task)
    what = (
        "it is empty" if rows == 0
        else f"it is short: {rows:,} of {pinned_rows:,} rows (a truncated copy, or another version)"
        if pinned_rows is not None and rows is not None and rows < pinned_rows
        else "it is another version or copy of the data"
    )
    return (
        f"{location} (sha256 {sha}, {rows:,} rows) is not the file that {task.path.name} pins in 'source.sha256'/"
        f"'source.rows' ({pinned}{f', {where}' if where else ''}): {what}, so its splits would not be the frozen "
        f"ones. {_fix(task)} To use your file instead, write your own manifest (`include: {task.path.name}`, a new "
        f"`name`, and `source: {{sha256: {sha}, rows: {rows}}}`) and freeze its splits with "
        "`kdbench tasks freeze YOUR.yaml --data-dir DIR`; its results are a different task."
    )


def describe_origin(task: Task) -> str:
    """Where the pinned file comes from, in words: ``source.origin`` (repository@revision path), else the hub."""
    origin = task.source.get("origin")
    if origin:
        return f"{origin['repo']}@{origin['revision'][:12]} {origin.get('path', '')}".rstrip()
    if "hub" in task.source:
        hub = task.source["hub"]
        return f"hub {hub['id']}@{hub['revision'][:12]} {hub['data_files']}"
    return ""


def attribution(task: Task) -> str | None:
    """The license line of a task's data (e.g. Dolly's CC BY-SA 3.0), from its manifest's ``source.origin``, for
    anything published from the data (leaderboard pages, exports) to carry it. None for generated or unlicensed
    sources."""
    origin = task.source.get("origin") or {}
    license_line = origin.get("license")
    if not license_line:
        return None
    where = origin.get("repo") or origin.get("url") or ""
    return f"Data: {license_line}" + (f", from {where}" if where else "") + "."


def _provenance(task: Task) -> dict[str, Any]:
    """What a split manifest records about where a verified file comes from (only when it is the pinned file)."""
    origin = task.source.get("origin")
    return {"origin": dict(origin)} if origin else {}


def _fix(task: Task) -> str:
    """How to get the pinned file (``source.origin``'s url, else the hub download)."""
    origin = task.source.get("origin", {})
    if origin.get("url"):
        return f"Get the pinned file from {origin['url']}."
    if "hub" in task.source:
        hub = task.source["hub"]
        return (f"Get it with `hf download {hub['id']} {hub['data_files']} --repo-type dataset --revision "
                f"{hub['revision']}`.")
    return ""


# --- generators ---------------------------------------------------------------------------------------------------
def _synthetic_pii(task: Task, params: dict[str, Any]) -> tuple[list[Example], str]:
    return generate(seed=task.seed, **params), GENERATOR_VERSION


GENERATORS: dict[str, Callable[[Task, dict[str, Any]], tuple[list[Example], str]]] = {
    "synthetic-pii": _synthetic_pii,
}
# The keys each generator takes under ``source.params`` (its keyword arguments but the seed, the task's own).
GENERATOR_PARAMS: dict[str, frozenset[str]] = {
    "synthetic-pii": frozenset(inspect.signature(generate).parameters) - {"seed"},
}


def check_generator(task: Task) -> None:
    """Refuse an unknown generator or ``source.params`` key when the task is planned, not when its group starts."""
    name = task.source.get("generator")
    if name is None:
        return
    if name not in GENERATORS:
        raise UnknownNameError("generator", name, GENERATORS, hint=f"In {task.path}, key 'source.generator'.")
    for key in task.source.get("params", {}):
        if key not in GENERATOR_PARAMS[name]:
            message = unknown_name_message(f"parameter of generator {name!r}", str(key), GENERATOR_PARAMS[name],
                                           shown=repr(f"source.params.{key}"))
            raise TaskError(f"{task.path}: {message}")


def _generated(task: Task) -> Loaded:
    check_generator(task)
    name = task.source["generator"]
    params = dict(task.source.get("params", {}))
    try:
        examples, version = GENERATORS[name](task, params)
    except (TypeError, ValueError) as exc:
        raise TaskError(f"{task.path}: key 'source.params': {exc}") from exc
    origin = {"kind": "generator", "generator": name, "generator_version": version, "params": params}
    return Loaded(examples, origin, f"generator {name!r}")


# --- local files --------------------------------------------------------------------------------------------------
def _file_rows(task: Task, data_dir: Path | None) -> tuple[list[Any], dict[str, Any], str]:
    """A ``source.file``: absolute, or looked up in the data directory, then beside the manifest."""
    name = task.source["file"]
    candidates = _file_candidates(Path(name), task.path.parent, data_dir)
    for candidate in candidates:
        if candidate.is_file():
            rows, sha = read_file(candidate, task.source.get("format"))
            return rows, {"kind": "file", "file": candidate.name, "sha256": sha}, str(candidate)
    looked = ", ".join(str(c) for c in candidates)
    raise MissingDataError(
        f"{task.path}: key 'source.file': {name!r} not found (looked for {looked}). Put the file there or pass "
        f"--data-dir DIR with DIR/{name}. {_fix(task)}".rstrip()
    )


def _file_candidates(name: Path, manifest_dir: Path, data_dir: Path | None) -> list[Path]:
    if data_dir is not None and data_dir.is_file():
        return [data_dir]
    if name.is_absolute():
        return [name]
    return ([data_dir / name] if data_dir is not None else []) + [manifest_dir / name]


def read_rows(path: Path, fmt: str | None = None) -> list[Any]:
    """The rows of a JSONL, JSON (a list of objects), CSV or Parquet file, in file order."""
    return read_file(path, fmt)[0]


_PARSED: dict[tuple[str, str], list[Any]] = {}  # (sha256, format) -> rows: by content, so never stale
_PARSED_MAX = 4


def read_file(path: Path, fmt: str | None = None) -> tuple[list[Any], str]:
    """The rows of a data file, read by ``datasets``' builder for its format, and the file's sha256. Rows are
    memoised by content hash, so the dolly tasks that share one 13 MB file (``tasks verify``) read it once per
    process; callers must not mutate them."""
    kind = fmt or FORMATS.get(path.suffix.lower())
    if kind is None:
        raise TaskError(f"{path}: unknown data format; use one of {', '.join(FORMATS)} or set 'source.format'.")
    try:
        sha = file_sha256(path)
        blank = path.stat().st_size < 4096 and not path.read_bytes().strip()
    except OSError as exc:
        raise TaskError(f"{path}: cannot read the data file ({exc}).") from exc
    if (sha, kind) in _PARSED:
        return list(_PARSED[(sha, kind)]), sha
    rows = [] if blank else _load_rows(path, kind, sha)
    if len(_PARSED) >= _PARSED_MAX:
        _PARSED.pop(next(iter(_PARSED)))
    _PARSED[(sha, kind)] = rows
    return list(rows), sha


def _load_rows(path: Path, kind: str, sha: str) -> list[dict[str, Any]]:
    """The file's rows as ``datasets`` reads them: JSON/JSONL through pyarrow's reader, CSV as text cells (no
    number or NA inference, as a CSV reader gives them), Parquet as stored.

    The builder prepares Arrow files in the kdbench cache, keyed by the file's content hash (a changed file never
    reads a stale copy). Later reads of the same content memory-map those files with pyarrow alone: importing
    ``datasets`` costs more than reading Dolly (benchmarks/task_load.py)."""
    spec = {"source_sha256": sha, "format": kind}
    cache = datasets_cache_dir(spec)
    prepared = _prepared_rows(cache)
    if prepared is not None:
        return prepared
    if kind == "json":
        _check_json_list(path)
    options: dict[str, Any] = {}
    if kind == "csv":
        import datasets

        header = _csv_header(path)
        options = {"encoding": "utf-8-sig", "keep_default_na": False, "na_filter": False,
                   "features": datasets.Features({name: datasets.Value("string") for name in header})}
    loaded = _builder_load(_BUILDERS[kind], cache, what=f"{path} as {kind}", data_files=str(path), **options,
                           diagnose=lambda: _diagnose(path, kind))
    rows: list[dict[str, Any]] = loaded.to_list() if loaded is not None else []
    record: dict[str, Any] = {**spec, "file": path.name, "rows": len(rows)}
    files = [Path(entry["filename"]) for entry in loaded.cache_files] if loaded is not None else []
    # Arrow as stored is what the rows are, unless a column needs ``datasets`` to decode it (mixed-type JSON)
    if loaded is not None and all(f.is_relative_to(cache) for f in files) and loaded.data.table.to_pylist() == rows:
        record["arrow"] = [str(f.relative_to(cache)) for f in files]
    atomic_write_text(cache / SPEC_FILE, json.dumps(record, sort_keys=True, indent=1))  # complete, for `cache ls`
    return rows


def _prepared_rows(cache: Path) -> list[dict[str, Any]] | None:
    """The rows of Arrow files a previous read prepared in ``cache``, memory-mapped; None if there are none."""
    try:
        record = json.loads((cache / SPEC_FILE).read_text(encoding="utf-8"))
        files = [cache / name for name in record["arrow"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not all(f.is_file() for f in files):
        return None
    import pyarrow as pa

    try:
        tables = [pa.ipc.open_stream(pa.memory_map(str(f))).read_all() for f in files]
        rows: list[dict[str, Any]] = pa.concat_tables(tables).to_pylist() if tables else []
    except (OSError, pa.ArrowException):  # damaged cache entry: the builder prepares it again
        return None
    return rows if len(rows) == record.get("rows") else None


def datasets_cache_dir(spec: Mapping[str, Any]) -> Path:
    """Where ``datasets`` prepares a source's Arrow files: ``<kdbench cache>/datasets/<key of spec>/`` (resolved,
    as the paths ``datasets`` reports are)."""
    path = (default_root() / DATASETS_CACHE_KIND / spec_key(spec)).resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TaskError(f"Cannot create the cache directory {path} ({exc.strerror}). Point {CACHE_ENV} at a "
                        "writable directory.") from exc
    return path


def _builder_load(builder: str, cache: Path, what: str, diagnose: Callable[[], list[Any] | None],
                 **options: Any) -> Any:
    """``datasets.load_dataset(builder, split="train")`` cached in ``cache``, quietly. A file it cannot read gets
    the precise error ``diagnose`` finds (file and line), else its own; None for a file without rows."""
    import datasets  # slow to import (pandas, pyarrow): only when a file is actually read

    try:
        with quiet_datasets(datasets):
            return datasets.load_dataset(builder, split="train", cache_dir=str(cache), **options)
    except Exception as exc:  # any builder failure: a damaged or foreign file, reported below
        rows = diagnose()
        if rows == []:
            return None
        raise TaskError(
            f"{what}: `datasets` cannot read the data file ({type(exc).__name__}: {exc}). Check that it is this "
            "task's data and that each column keeps one type in every row."
        ) from exc


@contextmanager
def quiet_datasets(datasets: Any) -> Iterator[None]:
    """No progress bars from ``datasets`` on kdbench's output; the caller's setting is restored after."""
    disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not disabled:
            datasets.enable_progress_bars()


def _check_json_list(path: Path) -> None:
    """A ``.json`` data file is one JSON list of objects (``datasets`` would read a lone object as one row)."""
    with path.open("rb") as handle:
        head = handle.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head and not head.startswith(b"["):
        raise TaskError(f"{path}: a JSON data file must hold a list of objects; this one does not start with '['. "
                        "For one object per line, name it .jsonl or set 'source.format: jsonl'.")


def _csv_header(path: Path) -> list[str]:
    """The CSV's column names, so that every column is read as text (``007`` stays ``007``)."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            return next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TaskError(f"{path}: cannot read the data file ({exc}).") from exc


def _diagnose(path: Path, kind: str) -> list[Any] | None:
    """After ``datasets`` failed: the JSON rows by a plain parse, raising its precise error (the line that is not
    JSON); None where no plainer reading helps (CSV, Parquet: their readers' errors name the line already)."""
    if kind not in ("json", "jsonl"):
        return None
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskError(f"{path}: cannot read the data file ({exc}).") from exc
    return _parse_json(path, text, kind)


def _parse_json(path: Path, text: str, kind: str) -> list[Any]:
    if kind == "json":
        rows = _json(path, text, 0)
        if not isinstance(rows, list):
            raise TaskError(f"{path}: a JSON data file must hold a list of objects, got {type(rows).__name__}.")
        return rows
    # split on "\n" only: str.splitlines() would also break at U+2028 and friends inside JSON strings
    return [_json(path, line, number) for number, line in enumerate(text.split("\n"), 1) if line.strip()]


def _json(path: Path, text: str, line: int) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where, expected = (f"line {line}", "one JSON object per line (JSON lines)") if line else (
            f"line {exc.lineno}", "a JSON list of objects")
        raise TaskError(
            f"{path}: {where} is not valid JSON ({exc.msg}); expected {expected}. The file is damaged or not this "
            "task's data: get a fresh copy."
        ) from None


# --- Hugging Face hub ---------------------------------------------------------------------------------------------
def _hub_rows(task: Task, data_dir: Path | None) -> tuple[list[Any], dict[str, Any], str]:
    """A local copy when a data directory is given (offline: never downloads), else the hub through ``datasets``."""
    hub = task.source["hub"]
    origin: dict[str, Any] = {"kind": "hub", "id": hub["id"], "revision": hub["revision"],
                              "data_files": hub["data_files"]}
    if data_dir is not None:
        for candidate in hub_candidates(task, data_dir):
            if candidate.is_file():
                origin["file"] = candidate.name if data_dir.is_file() else str(candidate.relative_to(data_dir))
                rows, origin["sha256"] = read_file(candidate, task.source.get("format"))
                return rows, origin, str(candidate)
        raise MissingDataError(missing_data_message(task, data_dir))
    import datasets  # a dependency, imported here only: most runs never touch the hub

    try:
        loaded = datasets.load_dataset(
            hub["id"], revision=hub["revision"], data_files=hub["data_files"], split=hub.get("split", "train")
        )
    except Exception as exc:  # network, auth, missing revision: all end the same way for the user
        raise MissingDataError(
            f"{task.path}: could not load {hub['id']}@{hub['revision']} from the Hugging Face hub "
            f"({type(exc).__name__}: {exc}). " + missing_data_message(task, None)
        ) from exc
    return [dict(row) for row in loaded], origin, f"{hub['id']}@{hub['revision']}"


def local_name(task: Task) -> str:
    """The file a hub task reads from the data directory (``source.hub.local``, else ``<id>/<data_files>``)."""
    hub = task.source["hub"]
    return str(hub.get("local") or f"{hub['id']}/{hub['data_files']}")


def hub_candidates(task: Task, data_dir: Path) -> list[Path]:
    """Where a local copy may lie: the data directory itself if it is a file, its ``local`` name, or the hub layout."""
    if data_dir.is_file():
        return [data_dir]
    hub = task.source["hub"]
    names = dict.fromkeys([local_name(task), f"{hub['id']}/{hub['data_files']}"])
    return [data_dir / name for name in names]


def missing_data_message(task: Task, data_dir: Path | None) -> str:
    """Which file to put where, and the command that fetches it."""
    hub = task.source["hub"]
    name, files = local_name(task), hub["data_files"]
    root = str(data_dir) if data_dir is not None else "<data-dir>"
    local_dir = f"{root}/{name[: -len(files)].rstrip('/')}".rstrip("/") if name.endswith(files) else root
    fetch = (
        f"`hf download {hub['id']} {files} --repo-type dataset --revision {hub['revision']} --local-dir {local_dir}`"
    )
    if not name.endswith(files):
        fetch += f" and rename it to {name}"
    return (
        f"{task.path}: task {task.name!r} needs {hub['id']} (revision {hub['revision']}, file {files}), which is "
        f"not available here. Put it at {root}/{name}; get it with {fetch} on a machine with internet, then pass "
        f"--data-dir {root} (or set {DATA_DIR_ENV})."
    )


# --- rows to examples ---------------------------------------------------------------------------------------------
def _to_example(row: Any, index: int, mapping: Mapping[str, str], prefix: str, task: Task, location: str) -> Example:
    """One source row as an Example; the id is the ``id`` column if mapped, else the prefix and the row number."""
    if not isinstance(row, dict):
        raise TaskError(f"{location}: row {index + 1} is a {type(row).__name__}, not an object with named columns.")

    def column(key: str, required: bool) -> str:
        name = mapping.get(key)
        if name is None or name not in row or row[name] is None:
            if required:  # a key absent from some JSON rows reads as null: the same gap
                what = "no column" if name is None or name not in row else "no value (missing or null) in column"
                raise TaskError(
                    f"{location}: row {index + 1} has {what} {name!r} (mapped by key 'fields.{key}' in {task.path})."
                )
            return ""
        return _text(row[name])

    category = column("category", required=False) or task.name
    identifier = column("id", required=True) if "id" in mapping else f"{prefix}{index:05d}"
    return Example(
        id=identifier,
        instruction=column("instruction", required=True),
        context=column("context", required=False),
        response=column("response", required=True),
        category=category,
    )


def _text(value: Any) -> str:
    """Cell to text. A list is a set of references (S-NI, UnNI): the first is the response."""
    if value is None:
        return ""
    if isinstance(value, list):
        return _text(value[0]) if value else ""
    return value if isinstance(value, str) else str(value)


# --- data and splits ----------------------------------------------------------------------------------------------
def load_source(task: Task, data_dir: Path | None = None, check_pin: bool = True) -> Loaded:
    """The task's examples with a record of what was read (``data_dir``: local copies of hub datasets, offline)."""
    return load(task, data_dir, check_pin)


def load_examples(task: Task, data_dir: Path | None = None) -> list[Example]:
    """All examples of the task's source (``data_dir``: where local copies of hub datasets live, offline)."""
    return load_source(task, data_dir).examples
