"""Defended models survive the cache: saving and rebuilding post-processed or modified models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from kdbench.core.errors import KdbenchError, PluginError
from kdbench.core.registry import get_registry

ARCHITECTURE_KEY = "kdbench_architecture"
"""``config.json`` key listing the architecture defenses (name, params) applied to a model, in order."""
MARKER = "kdbench-defended.json"
"""File naming the defense whose ``load_processed`` rebuilds a post-processed model saved in a directory."""


# --- saving and loading defended models -------------------------------------------------------------------------


def write_marker(directory: Path, defense: str, **extra: Any) -> None:
    """Mark ``directory`` as holding a model post-processed by ``defense`` (see :func:`load_defended`)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).write_text(json.dumps({"defense": defense, **extra}, indent=1, sort_keys=True))


def inside(directory: Path, name: Any, what: str) -> Path:
    """``directory / name``, refused unless it resolves (links followed) to somewhere inside ``directory``: file
    names read from a model directory (an index, a marker) must not make kdbench load weights from elsewhere."""
    if not isinstance(name, str) or not name:
        raise KdbenchError(f"{directory}: {what} names {name!r}, not a file name inside the model directory.")
    root = directory.resolve()
    target = (directory / name).resolve()
    if not target.is_relative_to(root):
        raise KdbenchError(
            f"{directory}: {what} names {name!r}, which lies outside the model directory ({target}); refusing to "
            "load it. The directory was crafted or damaged: do not use it."
        )
    return target


def is_defended(ref: str | Path) -> bool:
    """Whether ``ref`` is a directory holding a post-processed or architecture-modified model."""
    path = Path(ref)
    if (path / MARKER).is_file():
        return True
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise KdbenchError(f"{config}: not a valid JSON model config ({exc}); the model directory is damaged. "
                           "Save the model again, or copy it again.") from None
    return isinstance(data, dict) and ARCHITECTURE_KEY in data


def _defense_class(name: str) -> Any:
    try:
        return get_registry().get("defenses", name).cls
    except KdbenchError as exc:
        raise PluginError(f"A saved model needs defense {name!r} to load, which is not installed: {exc}") from None


def instantiate(name: str, params: dict[str, Any]) -> Any:
    """A registered defense with recorded parameters (as :func:`kdbench.core.params.params_dict` wrote them)."""
    cls = _defense_class(name)
    return cls(cls.Params(**params))


def load_defended(ref: str | Path, device: torch.device | None = None, trust_remote_code: bool = False) -> Any:
    path = Path(ref)
    marker_file = path / MARKER
    if marker_file.is_file():
        marker = json.loads(marker_file.read_text(encoding="utf-8"))
        model = _defense_class(marker["defense"]).load_processed(path, marker, trust_remote_code)
    else:
        model = _load_modified(path, trust_remote_code)
    if device is not None:
        model.to(device)
    model.eval()
    return model


def _load_modified(path: Path, trust_remote_code: bool) -> Any:
    """Rebuild the architecture from config + the recorded defenses, then load the saved weights into it."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    for entry in getattr(config, ARCHITECTURE_KEY):
        model = instantiate(entry["name"], entry["params"]).modify_student(model)
    index = path / "model.safetensors.index.json"
    files = ["model.safetensors"]
    if index.exists():  # a sharded checkpoint
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    state: dict[str, torch.Tensor] = {}
    for name in files:
        file = inside(path, name, "model.safetensors.index.json")
        try:
            state.update(load_file(str(file)))
        except (OSError, SafetensorError) as exc:
            raise KdbenchError(f"{file}: the saved weights cannot be read ({exc}); the file is missing, truncated "
                               "or damaged. Clear the cache entry with `kdbench cache`.") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    model.tie_weights()
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {params[name].data_ptr() for name in state if name in params}
    untied = [k for k in missing if k not in params or params[k].data_ptr() not in loaded]  # tied copies are fine
    if unexpected or untied:
        raise KdbenchError(
            f"{path}: the saved weights do not fit the defended architecture (missing {untied[:5]}, unexpected "
            f"{unexpected[:5]}); the cache entry is stale or the defense changed. Clear it with `kdbench cache`."
        )
    return model
