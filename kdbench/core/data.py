"""Examples and the prompt format shared by every task, model and stage."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

ALPACA_WITH_CONTEXT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{context}\n\n### Response:\n"
)
ALPACA_NO_CONTEXT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


@dataclass(frozen=True)
class Example:
    """One instruction-tuning record (Dolly's fields)."""

    id: str
    instruction: str
    context: str
    response: str
    category: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class PromptTemplate:
    """Alpaca by default (METHODS.md §1); tasks may override either form."""

    with_context: str = ALPACA_WITH_CONTEXT
    no_context: str = ALPACA_NO_CONTEXT

    def prompt(self, example: Example) -> str:
        if example.context.strip():
            return self.with_context.format(instruction=example.instruction, context=example.context)
        return self.no_context.format(instruction=example.instruction)


def normalise(text: str) -> str:
    """Content normalisation for hashing and disjointness: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def content_key(example: Example) -> str:
    """Normalised content of an example (its id and category do not count)."""
    return "\x1f".join(normalise(part) for part in (example.instruction, example.context, example.response))


def content_hash(examples: Iterable[Example]) -> str:
    """SHA-256 over the ids and normalised contents, in order: what a split manifest records per role."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example.id, content_key(example)], ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (data files and checkpoints can be large)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
