"""A task's split roles as a ``datasets.DatasetDict``, and written to a directory for other tools.

The roles are the runner's own (:func:`~kdbench.tasks.splits.make_splits`, checked against the shipped split
manifest by :func:`~kdbench.tasks.splits.verify_splits`), so what another tool trains or evaluates on is exactly
what kdbench attacked. An export carries the data's license and attribution (Dolly: CC BY-SA 3.0) with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdbench.core.cache import write_dir_atomically
from kdbench.core.data import file_sha256
from kdbench.core.errors import OutputError
from kdbench.core.version import __version__
from kdbench.tasks.manifest import Task, load_task
from kdbench.tasks.sources import attribution, quiet_datasets
from kdbench.tasks.splits import Splits, make_splits, split_manifest_path, verify_splits

if TYPE_CHECKING:
    from datasets import DatasetDict

COLUMNS = ("id", "instruction", "context", "response", "category")  # an Example's fields, as string columns
EXPORT_FORMATS = ("arrow", "jsonl", "parquet", "csv")
METADATA_FILE = "kdbench-export.json"
EXPORT_FORMAT_VERSION = 1


@dataclass(frozen=True)
class TaskData:
    """A task's splits as the runner computes them, and whether they match its split manifest."""

    task: Task
    splits: Splits
    verified: bool  # False: the task has no split manifest (unfrozen); a mismatch raises instead


def task_data(task: Task | str | Path, data_dir: str | Path | None = None) -> TaskData:
    """The task's split roles exactly as ``kdbench run`` gets them: the pinned data file (else
    :class:`~kdbench.tasks.sources.PinMismatchError`) split by the task's protocol and compared with the shipped
    split manifest (a mismatch raises :class:`~kdbench.core.errors.TaskError`)."""
    loaded = task if isinstance(task, Task) else load_task(str(task))
    splits = make_splits(loaded, data_dir=Path(data_dir) if data_dir is not None else None)
    return TaskData(loaded, splits, verify_splits(loaded, splits))


def dataset_dict(task: Task | str | Path, data_dir: str | Path | None = None) -> DatasetDict:
    """One ``datasets.Dataset`` per split role of ``task`` (a shipped task's name, a manifest path or a loaded
    :class:`~kdbench.tasks.manifest.Task`), with the string columns id, instruction, context, response and
    category, in the order kdbench uses them. ``data_dir`` is ``--data-dir``: where the task's data file lies.

    There is no seed argument: the split seed is part of the task (its split manifest freezes the result); for
    other splits write a manifest that ``include:``s the task with its own ``name`` and ``seed``."""
    return as_dataset_dict(task_data(task, data_dir))


def as_dataset_dict(data: TaskData) -> DatasetDict:
    """The roles of already computed splits as a ``DatasetDict`` (its info names the task and the data license)."""
    import datasets

    features = datasets.Features({column: datasets.Value("string") for column in COLUMNS})
    task = data.task
    origin = task.source.get("origin") or {}
    description = f"kdbench task {task.name!r} v{task.version} ({task.protocol} protocol): {task.description}"
    credit = attribution(task)
    return datasets.DatasetDict({
        role: datasets.Dataset.from_dict(
            {column: [getattr(example, column) for example in examples] for column in COLUMNS},
            info=datasets.DatasetInfo(description=description + (f" {credit}" if credit else ""), features=features,
                                      license=origin.get("license", ""), homepage=origin.get("url", "")),
            split=datasets.NamedSplit(role),
        )
        for role, examples in data.splits.roles.items()
    })


def export_task(
    task: Task | str | Path, out: Path, fmt: str = "arrow", data_dir: str | Path | None = None, force: bool = False
) -> dict[str, Any]:
    """Write the task's roles to ``out`` (``arrow``: ``DatasetDict.save_to_disk``; else one ``<role>.<fmt>`` file
    per role) with ``kdbench-export.json`` and a README that carry the task, its hashes and the data's license.
    A non-empty ``out`` is refused unless ``force``; the directory is written whole or not at all. Returns the
    metadata written."""
    if fmt not in EXPORT_FORMATS:
        raise OutputError(f"Unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}.")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not force)):
        what = "is a file" if not out.is_dir() else "is not empty"
        raise OutputError(f"{out} {what}; pass a new or empty --out directory, or --force to replace it.")
    data = task_data(task, data_dir)
    metadata = export_metadata(data, fmt)

    def write(tmp: Path) -> None:
        roles = as_dataset_dict(data)
        import datasets

        with quiet_datasets(datasets):
            if fmt == "arrow":
                roles.save_to_disk(str(tmp))
            for role, dataset in roles.items() if fmt != "arrow" else ():
                path = tmp / metadata["roles"][role]["path"]
                if fmt == "parquet":
                    dataset.to_parquet(str(path))
                elif fmt == "csv":
                    dataset.to_csv(str(path), index=False)
                else:
                    path.write_text("".join(_json_line(row) for row in dataset), encoding="utf-8")
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=1, ensure_ascii=False) + "\n", "utf-8")
        (tmp / "README.md").write_text(_readme(data, metadata), encoding="utf-8")

    write_dir_atomically(out, write)
    return metadata


# Line breaks to str.splitlines() that JSON leaves raw: escaped, so that every reader sees one object per line.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _json_line(row: dict[str, Any]) -> str:
    """One JSON lines row: readable UTF-8 (no escaped '/', unlike pandas' writer)."""
    return json.dumps(row, ensure_ascii=False).translate(_LINE_BREAKS) + "\n"


def export_metadata(data: TaskData, fmt: str) -> dict[str, Any]:
    """What an export records: the task and version, the manifest and split manifest files with their sha256, the
    data read, the license and attribution, and per role its size, content hash and file."""
    task, splits = data.task, data.splits
    split_manifest = split_manifest_path(task)
    origin = task.source.get("origin") or {}
    return {
        "kdbench_export": EXPORT_FORMAT_VERSION,
        "kdbench_version": __version__,
        "task": task.name,
        "version": task.version,
        "description": task.description,
        "protocol": task.protocol,
        "seed": task.seed,
        "distill_on": None if task.eval_only else task.distill_on,
        "manifest": {"file": task.path.name, "sha256": file_sha256(task.path),
                     "includes": [path.name for path in task.includes]},
        "split_manifest": ({"file": f"splits/{split_manifest.name}", "sha256": file_sha256(split_manifest),
                            "verified": data.verified} if data.verified else None),
        "source": splits.origin,
        "duplicates_dropped": splits.duplicates_dropped,
        "license": origin.get("license"),
        "attribution": attribution(task),
        "format": fmt,
        "columns": list(COLUMNS),
        "roles": {
            role: {"n": len(examples), "sha256": digest, "path": role if fmt == "arrow" else f"{role}.{fmt}"}
            for (role, examples), digest in zip(splits.roles.items(), splits.hashes().values(), strict=True)
        },
    }


def _readme(data: TaskData, metadata: dict[str, Any]) -> str:
    task = data.task
    load = {
        "arrow": "datasets.load_from_disk(DIR)",
        "jsonl": 'datasets.load_dataset("json", data_files={"eval": "DIR/eval.jsonl", ...})',
        "parquet": 'datasets.load_dataset("parquet", data_files={"eval": "DIR/eval.parquet", ...})',
        "csv": 'datasets.load_dataset("csv", data_files={"eval": "DIR/eval.csv", ...}, keep_default_na=False)',
    }[metadata["format"]]
    frozen = (f"They match its split manifest `tasks/{metadata['split_manifest']['file']}`." if data.verified else
              "The task has no split manifest (unfrozen): these splits are not proven identical to anyone else's.")
    lines = [
        f"# {task.name} (kdbench task, version {task.version})",
        "",
        task.description,
        "",
        f"Exported by kdbench {__version__} with `kdbench tasks export {task.name} --format {metadata['format']}`: "
        f"the task's split roles exactly as `kdbench run` uses them. {frozen} `private` holds the members (the "
        "teacher's fine-tuning data); `holdout` and `eval` are non-members.",
        "",
        "| role | examples | file | content sha256 |",
        "|---|---|---|---|",
        *(f"| {role} | {info['n']} | `{info['path']}` | `{info['sha256']}` |"
          for role, info in metadata["roles"].items()),
        "",
        f"Columns: {', '.join(COLUMNS)}. Load with `{load}`. Details, hashes and the data file read: "
        f"`{METADATA_FILE}`.",
    ]
    if metadata["attribution"]:
        lines += ["", "## License", "", f"{metadata['attribution']} Anything published from this data must carry "
                  "this attribution and keep its license."]
    return "\n".join(lines) + "\n"
