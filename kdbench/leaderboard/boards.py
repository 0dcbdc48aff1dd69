"""Board files: the published study as data.

A board file (``leaderboard/boards/<board>.yaml``) is a grid file whose cells are not one product: the six
distillers with no defense and every defense on two distillers are two products over the same tasks, seeds and
attacks. So a board holds the shared keys under ``grid`` and one partial grid per ``blocks`` entry; each block,
merged over ``grid``, is an ordinary grid file that ``kdbench run --grid`` runs (and resumes) on its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from kdbench.core.errors import KdbenchError, unknown_name_message
from kdbench.run.grid import GRID_KEYS, grid_key

BOARD_KEYS = ("description", "data_dir", "grid", "blocks")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass(frozen=True)
class Block:
    """One product of the board: the grid file ``kdbench run --grid`` is given."""

    name: str
    grid: dict[str, Any]


@dataclass(frozen=True)
class Board:
    name: str
    path: Path
    description: str
    needs_data_dir: bool
    blocks: tuple[Block, ...]


def board_files(directory: Path) -> dict[str, Path]:
    """The boards a directory defines, by name (the file's stem)."""
    return {p.stem: p for p in sorted(directory.glob("*.yaml"))}


def select_boards(directory: Path, names: tuple[str, ...]) -> list[Board]:
    """The named boards (all when none are named), each loaded and checked before anything runs."""
    available = board_files(directory)
    if not available:
        raise KdbenchError(f"{directory}: no board files (*.yaml); run from the repository root or pass --boards DIR.")
    for name in names:
        if name not in available:
            raise KdbenchError(f"{directory}: " + unknown_name_message("board", name, tuple(available)))
    return [load_board(available[name]) for name in (names or tuple(available))]


def select_blocks(boards: list[Board], names: tuple[str, ...]) -> list[Board]:
    """The boards cut to the named blocks (all blocks when none are named), so a study can be run in parts.

    Every name must be a block of some selected board; a board with none of them is left out.
    """
    if not names:
        return boards
    known = tuple(dict.fromkeys(block.name for board in boards for block in board.blocks))
    for name in names:
        if name not in known:
            raise KdbenchError(unknown_name_message("block", name, known))
    cut = [replace(board, blocks=tuple(b for b in board.blocks if b.name in names)) for board in boards]
    return [board for board in cut if board.blocks]


def load_board(path: Path) -> Board:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KdbenchError(f"{path}: cannot read the board file ({exc.strerror}).") from None
    except UnicodeDecodeError:
        raise KdbenchError(f"{path}: not UTF-8 text; save the board file as UTF-8.") from None
    except yaml.YAMLError as exc:
        raise KdbenchError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise KdbenchError(f"{path}: a board file must be a mapping with keys {', '.join(BOARD_KEYS)}.")
    for key in data:
        if key not in BOARD_KEYS:
            raise KdbenchError(f"{path}: " + unknown_name_message("board key", str(key), BOARD_KEYS))
    shared = _grid_mapping(path, "grid", data.get("grid") or {})
    blocks_data = data.get("blocks")
    if not isinstance(blocks_data, dict) or not blocks_data:
        raise KdbenchError(f"{path}: key 'blocks' must map block names to partial grids (at least one).")
    blocks = []
    for name, partial in blocks_data.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise KdbenchError(f"{path}: block name {name!r} must be lower-case letters, digits, '-' or '_'.")
        own = _grid_mapping(path, f"blocks.{name}", partial or {})
        overlap = sorted(set(own) & set(shared))
        if overlap:
            raise KdbenchError(f"{path}: block {name!r} sets {', '.join(overlap)}, already set under 'grid'; "
                               "set each key in one place.")
        merged = {**shared, **own}
        for required in ("task", "distiller", "attack"):
            if not any(grid_key(k) == required for k in merged):
                raise KdbenchError(f"{path}: block {name!r} has no '{required}' (under 'grid' or the block).")
        blocks.append(Block(name, merged))
    return Board(path.stem, path, str(data.get("description", "")), bool(data.get("data_dir", False)),
                 tuple(blocks))


def _grid_mapping(path: Path, where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise KdbenchError(f"{path}: key {where!r} must be a mapping of grid keys ({', '.join(GRID_KEYS)}).")
    for key in value:
        if grid_key(str(key)) not in GRID_KEYS:
            raise KdbenchError(f"{path}: under {where!r}, " + unknown_name_message("grid key", str(key), GRID_KEYS))
    return dict(value)


@dataclass(frozen=True)
class BlockRun:
    """Where one block runs: its grid file, its run directory, and where a stale run of it was moved (or None)."""

    block: Block
    grid_file: Path
    out: Path
    superseded: Path | None = None


def write_grid_files(board: Board, runs_dir: Path) -> Iterator[BlockRun]:
    """Each block's grid file and run directory under ``runs_dir/<board>/`` (the grid file is what ran).

    When a block's grid changed since its run directory was made (the board was edited), that directory holds
    another configuration, which ``kdbench run`` would refuse to resume into: it is moved aside to
    ``<block>.superseded-<n>`` (kept, not deleted) and the block starts afresh, its finished cells served by the
    cache.
    """
    root = runs_dir / board.name
    root.mkdir(parents=True, exist_ok=True)
    for block in board.blocks:
        grid_file = root / f"{block.name}.grid.yaml"
        out = root / block.name
        text = f"# generated from {board.path.name}, block {block.name!r}\n" + yaml.safe_dump(
            block.grid, sort_keys=False
        )
        superseded = None
        if not grid_file.exists() or grid_file.read_text(encoding="utf-8") != text:
            if grid_file.exists() and out.exists():
                n = 1
                while (root / f"{block.name}.superseded-{n}").exists():
                    n += 1
                superseded = out.rename(root / f"{block.name}.superseded-{n}")
            grid_file.write_text(text, encoding="utf-8")
        yield BlockRun(block, grid_file, out, superseded)
