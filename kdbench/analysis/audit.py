"""``kdbench audit``: the attack suite against any causal LM on disk and two sample files, no distillation.

Sample files are JSONL (``.jsonl`` / ``.json``: one object per line with ``text``, or ``instruction``,
optional ``context``, and ``response``) or plain text (any other suffix: one sample per line; blank lines are
skipped). ``text`` samples are encoded as ``tokenizer(text)`` encodes them (a Llama tokenizer adds its BOS,
GPT-2's adds nothing: a model fine-tuned the usual Hugging Face way never saw a BOS it was not given) and every
token after the first is scored, as MIMIR does; ``--bos prepend`` prepends the declared BOS instead and scores
every text token. Instruction samples get the Alpaca template and only their response is scored, as in kdbench
run.
Member and non-member files may differ in size (the AUC does not depend on the balance); both sizes are
reported and a warning says what the imbalance changes. Everything is batched and cached like a run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from kdbench.core.cache import ArtifactCache, spec_key
from kdbench.core.data import Example, PromptTemplate, content_hash
from kdbench.core.errors import KdbenchError
from kdbench.core.params import PluginSpec
from kdbench.core.progress import NullReporter, Reporter
from kdbench.core.registry import Registry, Resolved
from kdbench.core.types import Encoded, TrainedModel
from kdbench.evaluation import metrics
from kdbench.evaluation.attacks import run_attacks
from kdbench.models import hub as models
from kdbench.results.writers import score_lines
from kdbench.run.context import DEFAULT_TRAINING
from kdbench.run.plan import resolve
from kdbench.scoring.context import ScoringContext, ScoringHost, ShadowRecipe, external_model
from kdbench.scoring.host import encoded_hash
from kdbench.scoring.needs import Need
from kdbench.training.loop import LoopSettings, encode, sft_loss, train_loop

TEXT = "text"  # the category of plain-text samples: scored whole, no prompt template
MIN_SAMPLES = 2  # per file: below this an AUC (let alone a CI) means nothing
FEW_SAMPLES = 20  # below this per class, warn that the CI will be wide
JSONL_SUFFIXES = (".jsonl", ".json")
TOKENIZER, PREPEND = "tokenizer", "prepend"  # text encodings: as tokenizer(text) encodes it, or [BOS] + text
TEXT_ENCODINGS = (TOKENIZER, PREPEND)
RECORD_HELP = "Each line must be a JSON object with 'text', or with 'instruction' (optional 'context') and 'response'."


def _decode(path: Path, what: str) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise KdbenchError(f"The {what} file {path} does not exist.") from None
    except IsADirectoryError:
        raise KdbenchError(f"The {what} file {path} is a directory; give a JSONL or text file.") from None
    except OSError as exc:
        raise KdbenchError(f"Cannot read the {what} file {path} ({exc.strerror}).") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise KdbenchError(
            f"The {what} file {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}). Re-encode it "
            f"as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path} > fixed{path.suffix}`."
        ) from None


def _record(obj: Any, where: str) -> tuple[str, str, str]:
    """(instruction, context, response) of one JSONL object; instruction '' marks a plain text."""
    if not isinstance(obj, dict):
        hint = " (a JSON array? Write one object per line: JSONL)" if isinstance(obj, list) else ""
        raise KdbenchError(f"{where}: a JSON {type(obj).__name__}, not an object{hint}. {RECORD_HELP}")
    fields = ("text",) if "text" in obj else ("instruction", "response")
    for name in (*fields, "context"):
        if name not in obj and name != "context":
            raise KdbenchError(f"{where}: no {name!r} field (has {', '.join(sorted(obj)) or 'none'}). {RECORD_HELP}")
        if name in obj and not isinstance(obj[name], str):
            raise KdbenchError(f"{where}: field {name!r} must be a string, got {type(obj[name]).__name__}.")
    if "text" in obj:
        if not obj["text"].strip():
            raise KdbenchError(f"{where}: the 'text' field is empty.")
        return "", "", obj["text"]
    if not obj["response"].strip():
        raise KdbenchError(f"{where}: the 'response' field is empty; it is the text that gets scored.")
    return obj["instruction"], obj.get("context", ""), obj["response"]


def read_samples(path: Path, what: str) -> list[Example]:
    """The samples of a JSONL or plain-text file, or a KdbenchError naming the file (and line) and the fix."""
    text = _decode(path, what)
    jsonl = path.suffix.lower() in JSONL_SUFFIXES
    samples = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        sample_id = f"{path.name}:{number}"
        if not jsonl:
            samples.append(Example(sample_id, "", "", line, TEXT))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise KdbenchError(f"{path}:{number}: not valid JSON ({exc.msg}). {RECORD_HELP}") from None
        instruction, context, response = _record(obj, f"{path}:{number}")
        samples.append(Example(sample_id, instruction, context, response, "instruction" if instruction else TEXT))
    if not samples:
        raise KdbenchError(f"The {what} file {path} has no samples (it is empty or blank). Give one sample per line.")
    if len(samples) < MIN_SAMPLES:
        hint = " (a JSON array on one line? Write one object per line: JSONL)" if text.lstrip().startswith("[") else ""
        raise KdbenchError(
            f"The {what} file {path} has only {len(samples)} sample{hint}; membership metrics need at least "
            f"{MIN_SAMPLES} members and {MIN_SAMPLES} non-members (hundreds for tight confidence intervals)."
        )
    return samples


def input_warnings(members: Sequence[Example], nonmembers: Sequence[Example]) -> list[str]:
    """What is allowed but worth knowing about the two sample sets."""
    warnings = []
    if len(members) != len(nonmembers):
        warnings.append(
            f"{len(members)} members but {len(nonmembers)} non-members. The AUC does not depend on the balance; "
            f"TPR at low FPR is resolved in steps of 1/{len(nonmembers)} and balanced accuracy weighs both classes "
            "equally."
        )
    if min(len(members), len(nonmembers)) < FEW_SAMPLES:
        warnings.append(f"Fewer than {FEW_SAMPLES} samples in a class: the confidence intervals will be wide.")
    shared = {e.response for e in members} & {e.response for e in nonmembers}
    if shared:
        warnings.append(f"{len(shared)} text(s) appear in both files; their membership is ill-defined.")
    return warnings


def encode_text(text: str, tokenizer: Any, max_tokens: int, bos: str = TOKENIZER) -> Encoded | None:
    """A plain text as :class:`AuditHost` encodes it (None if nothing is left to score)."""
    return text_encodings([text], tokenizer, max_tokens, bos)[0]


def text_encodings(texts: Sequence[str], tokenizer: Any, max_tokens: int, bos: str = TOKENIZER) -> list[Encoded | None]:
    """Plain texts scored whole. ``tokenizer``: ids as ``tokenizer(text)`` gives them, the first unscored
    (nothing conditions it; a BOS when the tokenizer adds one). ``prepend``: the declared BOS, then every text
    token scored. None where nothing is left to score (a one-token text under ``tokenizer``)."""
    if bos not in TEXT_ENCODINGS:
        raise KdbenchError(f"Unknown text encoding {bos!r}; use one of {', '.join(TEXT_ENCODINGS)}.")
    if bos == TOKENIZER:
        rows = tokenizer(list(texts))["input_ids"]
        return [Encoded(tuple(ids[:1]), tuple(ids[1:max_tokens])) if len(ids) > 1 else None for ids in rows]
    if tokenizer.bos_token_id is None:
        raise KdbenchError("--bos prepend needs a BOS token, and this tokenizer declares none; use --bos tokenizer.")
    rows = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [Encoded((tokenizer.bos_token_id,), tuple(ids[: max_tokens - 1])) if ids else None for ids in rows]


def added_lead(tokenizer: Any) -> tuple[int, ...]:
    """The special tokens ``tokenizer(text)`` puts before a text (a Llama tokenizer's BOS; nothing for GPT-2's)."""
    probe = "a"
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return tuple(full[:start])
    return ()


def model_ref(ref: str, what: str) -> str:
    """``ref`` unchanged, or a clear error when it looks like a path that does not exist."""
    path = Path(ref).expanduser()
    looks_like_path = ref.startswith((".", "/", "~")) or len(path.parts) > 2  # hub names are "org/name"
    if looks_like_path and not path.exists():
        raise KdbenchError(f"The {what} {ref} does not exist. Give a model directory or a Hugging Face model name.")
    return ref


class AuditHost(ScoringHost):
    """Scoring for a model on disk: its own tokenizer, the Alpaca template for instruction samples."""

    def __init__(
        self,
        target: TrainedModel,
        *,
        cache: ArtifactCache,
        device: torch.device,
        reporter: Reporter | None = None,
        batch_size: int = 32,
        max_tokens: int = 512,
        template: PromptTemplate | None = None,
        max_prompt_tokens: int = 256,
        base: str | None = None,
        reference_text: Sequence[Example] | None = None,
        seed: int = 0,
        trust_remote_code: bool = False,
        bos: str = TOKENIZER,
    ) -> None:
        self.cache, self.device, self.reporter = cache, device, reporter or NullReporter()
        self.batch_size, self.base, self.reference_text, self.seed = batch_size, base, reference_text, seed
        self.template = template or PromptTemplate()
        self.trust_remote_code, self.bos = trust_remote_code, bos
        self.target = target
        self._models: dict[str, Any] = {target.key: models.load_model(target.path, device, trust_remote_code)}
        try:
            self._tokenizer = models.load_tokenizer(target.path, trust_remote_code)
        except KdbenchError as exc:
            raise KdbenchError(f"{exc} Save the tokenizer beside the model (tokenizer.save_pretrained(DIR)).") from exc
        self.max_tokens = min(max_tokens, models.max_positions(self._models[target.key]))
        self.max_prompt_tokens = min(max_prompt_tokens, self.max_tokens - 1)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def encode(self, examples: Sequence[Example], tokenizer: Any = None) -> list[Encoded]:
        tokenizer = tokenizer or self._tokenizer
        out: dict[int, Encoded | None] = {}
        texts = [i for i, e in enumerate(examples) if e.category == TEXT]
        others = [i for i, e in enumerate(examples) if e.category != TEXT]
        if texts:
            rows = text_encodings([examples[i].response for i in texts], tokenizer, self.max_tokens, self.bos)
            out |= dict(zip(texts, rows, strict=True))
        if others:
            encoded = encode([examples[i] for i in others], tokenizer, self.template, self.max_prompt_tokens,
                             self.max_tokens)
            out |= dict(zip(others, encoded, strict=True))
        result = []
        for i, e in enumerate(examples):
            item = out[i]
            if item is None:
                raise KdbenchError(f"Sample {e.id} is a single token and the tokenizer adds no BOS to condition it on: "
                                   "nothing is left to score. Remove it, give longer texts, or pass --bos prepend.")
            result.append(item)
        return result

    def full_text(self, example: Example) -> str:
        return example.response if example.category == TEXT else self.template.prompt(example) + example.response

    def after_prefix(self, prefix: Sequence[int], example: Example, encoded: Encoded) -> Encoded:
        """A plain text after a ReCaLL prefix, joined as MIMIR joins them: the prefix as ``tokenizer(prefix)``
        encodes it (its BOS, if the tokenizer adds one, or the prepended BOS), then every text token, scored, with
        no BOS between them."""
        if example.category != TEXT:
            return super().after_prefix(prefix, example, encoded)
        lead = (self._tokenizer.bos_token_id,) if self.bos == PREPEND else added_lead(self._tokenizer)
        head = lead + tuple(prefix)
        if not head:  # no room for a prefix and nothing to condition the first token on: the plain encoding
            return encoded
        return Encoded(head, encoded.input_ids[len(lead) :])

    def load(self, trained: TrainedModel) -> Any:
        if trained.key not in self._models:
            self._models[trained.key] = models.load_model(trained.path, self.device, self.trust_remote_code)
        return self._models[trained.key]

    def _base(self, attack: str) -> str:
        if self.base is None:
            raise KdbenchError(f"{attack} needs the audited model's un-fine-tuned base: pass --base MODEL (a path, a "
                               "hub name, or builtin:<preset> for a model trained from scratch).")
        return self.base

    def reference(self, name: str, target: TrainedModel) -> TrainedModel:
        if name in ("public", "baseline"):
            raise KdbenchError(f"ref:model={name} exists only in kdbench run (a task's public split or no-KD "
                               "baseline); in an audit use --base MODEL or ref:model=PATH.")
        if name in ("auto", "base"):
            name = self._base("ref (model=auto)")
            if models.is_preset(name):
                raise KdbenchError(f"--base {name} is a random initialisation, useless as a reference; pass "
                                   "ref:model=PATH (e.g. a model trained on public same-domain data).")
        return external_model(model_ref(name, "reference model"), "reference")

    def shadow(self, target: TrainedModel, data: Sequence[Example], recipe: ShadowRecipe, label: str) -> TrainedModel:
        """``--base`` (or lira:base=...) fine-tuned on ``data`` with [Z]'s teacher recipe unless overridden."""
        base = model_ref(recipe.base or self._base("lira and rmia (shadow models)"), "shadow base")
        config = recipe.apply(DEFAULT_TRAINING["teacher"])
        encoded = self.encode(data)
        spec = {"stage": "shadow", "base": models.model_identity(base), "tokenizer": target.key,
                "data": [content_hash(data), encoded_hash(encoded)], "train": asdict(config), "seed": self.seed}

        def build(tmp: Path) -> None:
            model = models.init_model(base, self._tokenizer, self.seed, self.trust_remote_code)
            settings = LoopSettings(seed=self.seed, pad_id=self._tokenizer.pad_token_id, device=self.device,
                                    reporter=self.reporter, label=f"training {label}")
            train_loop(model, encoded, sft_loss, config, settings)
            models.save_model(model, self._tokenizer, tmp)

        path = self.cache.get_or_build("model", spec, build)
        return TrainedModel("shadow", label, spec_key(spec), path, base)

    def corpus(self, need: str) -> Sequence[Example] | None:
        return self.reference_text if need in (Need.TOKEN_FREQUENCIES, Need.NONMEMBER_TEXT) else None

    def missing_hint(self, need: str) -> str:
        return "pass --reference-text FILE: same-domain text that neither the model nor the member file contains"


@dataclass
class AuditResult:
    model: str
    model_key: str
    members: Path
    nonmembers: Path
    sample_ids: list[str]
    n_members: int
    n_nonmembers: int
    attacks: dict[str, metrics.MembershipMetrics]
    scores: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    text_encoding: str = TOKENIZER
    cache_builds: int = 0
    cache_hits: int = 0

    def to_json(self) -> dict[str, Any]:
        def attack_json(m: metrics.MembershipMetrics) -> dict[str, Any]:
            data = asdict(m)
            data["tpr_at_0.1pct_fpr"] = data.pop("tpr_at_01pct_fpr")
            data["auc_ci"] = list(m.auc_ci)
            return data

        return {
            "model": self.model,
            "model_key": self.model_key,
            "members": {"file": str(self.members), "n": self.n_members},
            "nonmembers": {"file": str(self.nonmembers), "n": self.n_nonmembers},
            "warnings": self.warnings,
            "text_encoding": self.text_encoding,
            "attacks": {label: attack_json(m) for label, m in self.attacks.items()},
            "cache": {"built": self.cache_builds, "reused": self.cache_hits},
        }

    def scores_jsonl(self) -> str:
        meta = {"target": "audit", "model": self.model, "model_key": self.model_key,
                "text_encoding": self.text_encoding}
        return score_lines(meta, self.sample_ids, self.n_members, self.scores)


@dataclass(frozen=True)
class AuditConfig:
    model: str
    members: Path
    nonmembers: Path
    attacks: Sequence[PluginSpec]
    base: str | None = None
    reference_text: Path | None = None
    seed: int = 0
    bootstrap: int = 1000
    batch_size: int = 32
    max_tokens: int = 512
    device: str = "auto"
    trust_remote_code: bool = False
    bos: str = TOKENIZER  # how plain texts are encoded: TOKENIZER or PREPEND (see text_encodings)


def run_audit(
    config: AuditConfig, registry: Registry, cache: ArtifactCache | None = None, reporter: Reporter | None = None
) -> AuditResult:
    """Attack ``config.model`` with every attack; input problems fail before any model is loaded."""
    attacks: list[Resolved] = resolve(registry, "attacks", config.attacks)
    members = read_samples(config.members, "member")
    nonmembers = read_samples(config.nonmembers, "non-member")
    reference_text = read_samples(config.reference_text, "reference-text") if config.reference_text else None
    if config.bootstrap < 10:
        raise KdbenchError(f"--bootstrap {config.bootstrap} is too few resamples for a CI; use at least 10.")
    cache = cache or ArtifactCache()
    target = external_model(model_ref(config.model, "model"), "target")
    host = AuditHost(
        target, cache=cache, device=models.resolve_device(config.device), reporter=reporter,
        batch_size=config.batch_size, max_tokens=config.max_tokens, base=config.base, reference_text=reference_text,
        seed=config.seed, trust_remote_code=config.trust_remote_code, bos=config.bos,
    )
    host.check_needs([(a.label, a.instance.needs) for a in attacks])
    builds, hits = len(cache.builds), len(cache.hits)
    scoring = ScoringContext(host, target, members + nonmembers)
    results, scores = run_attacks(attacks, scoring, len(members), seed=config.seed, n_resamples=config.bootstrap)
    return AuditResult(
        config.model, target.key, config.members, config.nonmembers, [e.id for e in scoring.samples],
        len(members), len(nonmembers), results, scores, input_warnings(members, nonmembers), config.bos,
        len(cache.builds) - builds, len(cache.hits) - hits,
    )
