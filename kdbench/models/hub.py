"""Models and tokenizers: tiny GPT-2s for the embedded default, or any Hugging Face causal LM.

A model reference is ``builtin:<preset>`` (a random initialisation built from a config), ``builtin:<shipped>``
(a pre-trained checkpoint shipped in ``kdbench/models/bases/``, see :mod:`kdbench.models.pretrain`), or a
Hugging Face name / local directory (loaded with transformers, safetensors only, ``trust_remote_code`` off unless
asked).
"""

from __future__ import annotations

import functools
import json
import os
import socket
import urllib.parse
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

from kdbench.core.errors import KdbenchError, UnknownNameError
from kdbench.models.defended import is_defended, load_defended

# kdbench draws its own progress bars; transformers' per-shard bars and advisory warnings would bury them.
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

BUILTIN_PREFIX = "builtin:"
PATH_FORMS = ("/", "./", "../", "~")  # a model reference starting so is a directory, never a hub name
EOS = "<|endoftext|>"


@dataclass(frozen=True)
class TinyGPT2:
    """A GPT-2-architecture preset small enough to train on a 2-core CPU in a minute."""

    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int = 256


PRESETS: dict[str, TinyGPT2] = {
    "gpt2-tiny-teacher": TinyGPT2(n_layer=4, n_embd=128, n_head=4),
    "gpt2-tiny-student": TinyGPT2(n_layer=2, n_embd=96, n_head=4),
    "gpt2-micro": TinyGPT2(n_layer=1, n_embd=32, n_head=2, n_positions=128),  # for tests
}


# Pre-trained checkpoints shipped with kdbench (built by kdbench.models.pretrain), by built-in name.
SHIPPED_DIR = Path(__file__).parent / "bases"
SHIPPED = ("gpt2-synth-teacher", "gpt2-synth-student")
SHIPPED_MANIFEST = "BASES.json"


def is_builtin(ref: str) -> bool:
    """Made by kdbench: a preset or a shipped checkpoint (never a download)."""
    return ref.startswith(BUILTIN_PREFIX)


def shipped_dir(ref: str) -> Path | None:
    """The directory of a shipped pre-trained checkpoint, or None when ``ref`` names none."""
    name = ref.removeprefix(BUILTIN_PREFIX)
    return SHIPPED_DIR / name if is_builtin(ref) and name in SHIPPED else None


def is_preset(ref: str) -> bool:
    """A built-in random initialisation (no pre-training: useless as a reference model, no tokenizer of its own)."""
    return is_builtin(ref) and shipped_dir(ref) is None


def preset(ref: str) -> TinyGPT2:
    name = ref.removeprefix(BUILTIN_PREFIX)
    if name not in PRESETS:
        raise UnknownNameError("built-in model", name, [*PRESETS, *SHIPPED],
                               hint="Or pass a Hugging Face name or a directory.")
    return PRESETS[name]


def model_identity(ref: str) -> dict[str, Any]:
    """What determines a base model, for cache keys: the preset's config, a shipped checkpoint's weight hash, or
    the name/path (and its mtime)."""
    directory = shipped_dir(ref)
    if directory is not None:
        manifest = json.loads((directory.parent / SHIPPED_MANIFEST).read_text())
        return {"builtin": ref, "sha256": manifest["bases"][directory.name]["sha256"]["model.safetensors"]}
    if is_builtin(ref):
        return {"builtin": ref, **asdict(preset(ref))}
    path = Path(ref).expanduser()
    if path.exists():
        config = path / "config.json"
        return {"path": str(path.resolve()), "mtime": config.stat().st_mtime if config.exists() else None}
    return {"hub": ref}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise KdbenchError("--device cuda was asked for, but torch sees no CUDA device. Use --device cpu or auto.")
    return torch.device(device)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained with `tokenizers` (any text encodes; no unknown tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, pad_token=EOS, bos_token=EOS)


def resolve_ref(ref: str | Path) -> str:
    """``ref`` as transformers should see it: a path form (absolute, ./, ../, ~) expanded and required to exist
    (the hub would only say it is not a valid repository id); anything else as given (a directory or a name that
    :func:`check_hub_name` lets through)."""
    text = str(ref)
    directory = shipped_dir(text)
    if directory is not None:
        if not (directory / "model.safetensors").is_file():
            raise KdbenchError(f"{text}: the shipped checkpoint {directory} is missing; reinstall kdbench or "
                               "rebuild it with `kdbench bases build`.")
        return str(directory)
    if not text.startswith(PATH_FORMS):
        check_hub_name(text)
        return text
    path = Path(text).expanduser()
    if not path.exists():
        raise KdbenchError(f"{text}: no such model directory. Pass an existing directory written by "
                           "save_pretrained, or a Hugging Face model name.")
    return str(path)


def check_hub_name(ref: str) -> None:
    """Fail at once, saying what to do, for a name that is neither a directory nor in the local hub cache when
    the hub cannot be reached: transformers would retry for half a minute and then blame the connection."""
    if is_builtin(ref) or Path(ref).expanduser().is_dir():
        return
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(ref, "config.json")
    except ValueError as exc:  # HFValidationError: not a repository id either
        raise KdbenchError(f"{ref}: no such model directory, and not a Hugging Face model name ({exc}). Pass an "
                           "existing directory written by save_pretrained, or a name such as gpt2.") from None
    if isinstance(cached, str):
        return
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline or not _hub_reachable():
        why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face hub cannot be reached"
        raise KdbenchError(
            f"{ref}: no such model directory, not in the local Hugging Face cache, and {why}. Pass a directory "
            "written by save_pretrained (e.g. ./models/NAME), download the model first where there is a network "
            "(huggingface-cli download NAME), or check the name and the connection."
        )


@functools.lru_cache(maxsize=1)
def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub endpoint opens (behind a proxy, assumed so: the probe cannot tell)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    from huggingface_hub import constants

    url = urllib.parse.urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname or "", url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


# Files one of which every saved tokenizer has; without any, transformers builds an empty tokenizer silently.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model",
                   "spiece.model", "sentencepiece.bpe.model")


def load_tokenizer(ref: str | Path, trust_remote_code: bool = False) -> Any:
    source = resolve_ref(ref)
    directory = Path(source).expanduser()
    if directory.is_dir() and not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise KdbenchError(
            f"{ref}: the model directory has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}). Save the "
            "tokenizer beside the model (tokenizer.save_pretrained(DIR))."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise KdbenchError(f"Cannot load a tokenizer from {ref}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def init_model(
    ref: str, tokenizer: Any, seed: int, trust_remote_code: bool = False, dtype: torch.dtype | None = None
) -> PreTrainedModel:
    """The base model a stage starts from: a freshly initialised preset, or pretrained weights (in ``dtype``)."""
    if is_preset(ref):
        p = preset(ref)
        torch.manual_seed(seed)
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=p.n_positions,
            n_embd=p.n_embd,
            n_layer=p.n_layer,
            n_head=p.n_head,
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        return GPT2LMHeadModel(config)
    return load_model(ref, trust_remote_code=trust_remote_code, dtype=dtype)


def load_model(
    ref: str | Path,
    device: torch.device | None = None,
    trust_remote_code: bool = False,
    dtype: torch.dtype | None = None,
) -> Any:
    """Load a causal LM (safetensors only) or explain why the path is not one. A defended model (an ensemble,
    a logit-adjusting wrapper, a changed architecture) is rebuilt by :func:`kdbench.models.defended.load_defended`."""
    if is_defended(ref):
        return load_defended(ref, device, trust_remote_code)
    source = resolve_ref(ref)
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(
            source, use_safetensors=True, trust_remote_code=trust_remote_code, **({"dtype": dtype} if dtype else {})
        )
    except SafetensorError as exc:
        raise KdbenchError(
            f"{ref}: the safetensors weights cannot be read ({exc}); the file is truncated or damaged. Save the "
            "model again, or copy it again."
        ) from None
    except (OSError, ValueError, KeyError) as exc:
        hint = " (offline: HF_HUB_OFFLINE=1)" if offline else ""
        raise KdbenchError(
            f"Cannot load a causal language model from {ref}{hint}: {exc}. Pass a Hugging Face model name or a "
            "directory written by save_pretrained with safetensors weights."
        ) from exc
    if device is not None:
        model = model.to(device)
    return model


def save_model(model: PreTrainedModel, tokenizer: Any, directory: Path) -> None:
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def max_positions(model: PreTrainedModel) -> int:
    return config_positions(model.config)


def config_positions(config: Any) -> int:
    """The most positions (tokens) a model with this transformers config takes."""
    for attr in ("n_positions", "max_position_embeddings"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value
    return 2048


def model_config(ref: str, trust_remote_code: bool = False) -> Any:
    """The transformers config of a base model reference (what ``check`` receives), without loading weights."""
    from transformers import AutoConfig

    if is_preset(ref):
        p = preset(ref)
        return GPT2Config(n_layer=p.n_layer, n_embd=p.n_embd, n_head=p.n_head, n_positions=p.n_positions)
    try:
        return AutoConfig.from_pretrained(resolve_ref(ref), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise KdbenchError(f"Cannot read the model config of {ref}: {exc}") from exc
