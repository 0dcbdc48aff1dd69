"""One pass, many attacks: every statistic an attack needs, computed once per (model, samples, variant).

An attack reads ``inputs.scoring``, a :class:`ScoringContext` for one target model and one set of samples. Each
of its methods computes one need lazily, stores it in the content-addressed ArtifactCache (keyed by the model's
key, a hash of the exact token ids scored, and the variant with its parameters) and memoises it for the
evaluation, so ten attacks that share a need pay for it once, and adding an attack to a finished grid computes
only what that attack adds. Where models, encodings and data come from is the :class:`ScoringHost`'s business:
:class:`RunHost` for ``kdbench run`` (built on RunContext), ``kdbench.analysis.audit.AuditHost`` for ``kdbench audit``.
"""

from __future__ import annotations

import hashlib
import json
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import numpy as np
import torch

from kdbench.core.cache import ArtifactCache, spec_key
from kdbench.core.data import Example
from kdbench.core.errors import KdbenchError
from kdbench.core.progress import NullReporter, Reporter
from kdbench.core.types import Encoded, TrainConfig, TrainedModel
from kdbench.models import hub as models
from kdbench.models.perturb import perturbed
from kdbench.scoring.needs import ALL_NEEDS, Need
from kdbench.scoring.tokenstats import TokenStats, compute_token_stats, mean_logprob
from kdbench.scoring.variants import neighbour_rng, neighbour_text
from kdbench.training.loop import batches, collate, response_cross_entropy, to_device

# Bump when a computation below changes what it produces, so stale artifacts are not reused.
SCORING_VERSION = 1
T = TypeVar("T")


@dataclass(frozen=True)
class ShadowRecipe:
    """How shadow models are trained; ``None`` fields take the host's default for the target."""

    base: str | None = None  # the base to fine-tune; None: the target's own base
    lr: float | None = None
    epochs: int | None = None
    batch_size: int | None = None

    def apply(self, config: TrainConfig) -> TrainConfig:
        return replace(
            config,
            lr=config.lr if self.lr is None else self.lr,
            epochs=config.epochs if self.epochs is None else self.epochs,
            batch_size=config.batch_size if self.batch_size is None else self.batch_size,
        )


class ScoringHost(ABC):
    """Where scoring gets models, encodings and data. Every encoding has a non-empty prompt, so every
    response token is scored and the token statistics line up with ``Encoded.response_ids``."""

    cache: ArtifactCache
    device: torch.device
    reporter: Reporter = NullReporter()
    batch_size: int = 32

    @property
    @abstractmethod
    def tokenizer(self) -> Any: ...

    @abstractmethod
    def encode(self, examples: Sequence[Example], tokenizer: Any = None) -> list[Encoded]:
        """Token ids as the target reads them (``tokenizer``: another model's, e.g. a reference's)."""

    @abstractmethod
    def full_text(self, example: Example) -> str:
        """Prompt and response as one text (ReCaLL's prefixes)."""

    @abstractmethod
    def load(self, trained: TrainedModel) -> Any:
        """The model, loaded once."""

    @abstractmethod
    def reference(self, name: str, target: TrainedModel) -> TrainedModel:
        """Resolve a reference model name (``auto``, ``base``, ``public``, ``baseline`` or a path / hub name)."""

    @abstractmethod
    def shadow(self, target: TrainedModel, data: Sequence[Example], recipe: ShadowRecipe, label: str) -> TrainedModel:
        """A model of the target's kind fine-tuned on ``data`` (cached)."""

    @abstractmethod
    def corpus(self, need: str) -> Sequence[Example] | None:
        """The text behind ``Need.TOKEN_FREQUENCIES`` or ``Need.NONMEMBER_TEXT``, or None if there is none."""

    def missing_hint(self, need: str) -> str:
        """How a user provides ``need`` when this host lacks it."""
        return ""

    def timed(self, stage: str) -> AbstractContextManager[None]:
        return nullcontext()

    def token_stats(self, trained: TrainedModel, samples: Sequence[Example]) -> TokenStats:
        """The target's token statistics on the samples as they are: the one shared batched pass."""
        return cached_stats(self, trained, self.encode(samples), "plain")

    def check_needs(self, attacks: Sequence[tuple[str, frozenset[str]]]) -> None:
        """Refuse, before any work, attacks whose needs this host cannot provide."""
        problems = []
        for label, needs in attacks:
            for need in sorted(needs):
                if need not in ALL_NEEDS:
                    problems.append(f"attack {label!r} needs {need!r}, which kdbench does not know")
                elif need in (Need.TOKEN_FREQUENCIES, Need.NONMEMBER_TEXT) and not self.corpus(need):
                    problems.append(f"attack {label!r} needs {need} ({self.missing_hint(need)})")
        if problems:
            raise KdbenchError("Cannot run these attacks here: " + "; ".join(problems) + ".")


def encoded_hash(encoded: Sequence[Encoded]) -> str:
    """SHA-256 over the exact token ids: what a statistic depends on, whatever text, template or tokenizer."""
    digest = hashlib.sha256()
    for e in encoded:
        digest.update(json.dumps([e.prompt_ids, e.response_ids]).encode())
    return digest.hexdigest()


def cached_arrays(
    host: ScoringHost, kind: str, spec: dict[str, Any], compute: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Arrays built once by ``compute`` and stored under ``spec`` in the cache."""

    def build(tmp: Path) -> None:
        arrays: dict[str, Any] = compute()
        np.savez(tmp / "arrays.npz", **arrays)

    with host.timed(kind):
        path = host.cache.get_or_build(kind, {**spec, "scoring_version": SCORING_VERSION}, build)
    with np.load(path / "arrays.npz") as data:
        return {name: data[name] for name in data.files}


def length_sorted_stats(
    host: ScoringHost, model: Any, encoded: Sequence[Encoded], label: str, pad_id: int | None = None
) -> TokenStats:
    """:func:`compute_token_stats` over ``encoded`` batched by length (padding costs ~45% on the default
    task's attack samples, ~5% sorted), returned in the original order."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    stats = compute_token_stats(
        model, [encoded[i] for i in order], pad_id=host.tokenizer.pad_token_id if pad_id is None else pad_id,
        device=host.device, batch_size=host.batch_size, reporter=host.reporter, label=label,
    )
    position = np.argsort(order)  # where each original sample sits in the sorted pass
    lengths = np.diff(stats.offsets)[position]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = {}
    for name, flat in stats.values.items():
        parts = [flat[stats.offsets[j] : stats.offsets[j + 1]] for j in position]
        values[name] = np.concatenate(parts) if parts else flat
    return TokenStats(offsets=offsets, values=values)


def cached_stats(
    host: ScoringHost, trained: TrainedModel, encoded: list[Encoded], variant: str, pad_id: int | None = None
) -> TokenStats:
    """``trained``'s token statistics on ``encoded`` (one batched pass), cached by model, token ids, variant."""
    spec = {"stage": "variant_stats", "model": trained.key, "variant": variant, "data": encoded_hash(encoded)}

    def compute() -> dict[str, np.ndarray]:
        label = f"scoring {trained.label} ({variant})"
        stats = length_sorted_stats(host, host.load(trained), encoded, label, pad_id)
        return {"offsets": stats.offsets, **stats.values}

    arrays = cached_arrays(host, "token_stats", spec, compute)
    return TokenStats(offsets=arrays.pop("offsets"), values=arrays)


def external_model(ref: str, role: str) -> TrainedModel:
    """A model on disk or on the hub, identified by its name or path and its files' sizes and mtimes."""
    path = Path(ref).expanduser()
    identity: dict[str, Any] = {"ref": models.model_identity(ref)}
    if path.is_dir():
        identity["files"] = sorted(
            (f.name, f.stat().st_size, f.stat().st_mtime) for f in path.iterdir()
            if f.suffix in (".safetensors", ".json") and f.is_file()
        )
    return TrainedModel(role, ref, spec_key(identity), path if path.exists() else Path(ref), ref)


class ScoringContext:
    """Every need of every attack for one target model and one list of samples, each computed once."""

    def __init__(self, host: ScoringHost, target: TrainedModel, samples: Sequence[Example]) -> None:
        self.host, self.target, self.samples = host, target, list(samples)
        self._memo: dict[tuple[Any, ...], Any] = {}

    def _once(self, key: tuple[Any, ...], compute: Callable[[], T]) -> T:
        if key not in self._memo:
            self._memo[key] = compute()
        return cast(T, self._memo[key])

    def _corpus(self, need: str) -> Sequence[Example]:
        corpus = self.host.corpus(need)
        if not corpus:
            raise KdbenchError(f"Nothing provides {need} here ({self.host.missing_hint(need)}).")
        return corpus

    # --- the target on the samples -----------------------------------------------------------------------
    def encoded(self) -> list[Encoded]:
        return self._once(("encoded",), lambda: self.host.encode(self.samples))

    def token_stats(self) -> TokenStats:
        return self._once(("stats",), lambda: self.host.token_stats(self.target, self.samples))

    def mean_logprob(self) -> np.ndarray:
        return self._once(("mean_logprob",), lambda: mean_logprob(self.token_stats()))

    def scored_token_ids(self) -> list[np.ndarray]:
        """The token ids behind each sample's token statistics (the response tokens)."""
        return [np.asarray(e.response_ids, dtype=np.int64) for e in self.encoded()]

    def model(self) -> Any:
        """White-box access: the loaded target model (restore anything you change)."""
        return self.host.load(self.target)

    # --- text variants -----------------------------------------------------------------------------------
    def variant_stats(self, variant: str, examples: Sequence[Example]) -> TokenStats:
        """The target's token statistics on transformed samples; ``variant`` names the transformation."""
        return self._once(
            ("variant", variant), lambda: cached_stats(self.host, self.target, self.host.encode(examples), variant)
        )

    def lowercase_stats(self) -> TokenStats:
        lowered = [replace(e, response=e.response.lower()) for e in self.samples]
        return self.variant_stats("lowercase", lowered)

    def neighbour_stats(self, n: int, rate: float, seed: int) -> TokenStats:
        """Statistics of ``n`` neighbours per sample, sample-major (neighbour j of sample i at i·n + j)."""
        neighbours = [
            replace(e, response=neighbour_text(e.response, rate, neighbour_rng(e.response, seed, j)))
            for e in self.samples
            for j in range(n)
        ]
        return self.variant_stats(f"neighbours:n={n},rate={rate},seed={seed}", neighbours)

    def recall_prefix(self, shots: int, seed: int) -> list[int]:
        """ReCaLL's non-member prefix: ``shots`` texts drawn with ``seed`` from text no model trained on."""
        pool = self._corpus(Need.NONMEMBER_TEXT)
        chosen = random.Random(seed).sample(list(pool), min(shots, len(pool)))
        text = "".join(self.host.full_text(e) + "\n\n" for e in chosen)
        ids: list[int] = self.host.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    def prefixed_stats(self, shots: int, seed: int, max_prefix_tokens: int) -> TokenStats:
        """Statistics of the samples after the ReCaLL prefix, cut (from its start) to fit the model's context."""
        prefix = self.recall_prefix(shots, seed)[-max_prefix_tokens:]
        limit = models.max_positions(self.model())
        encoded = []
        for e in self.encoded():
            room = max(0, limit - len(e.input_ids))
            kept = prefix[len(prefix) - room :] if room else []
            encoded.append(Encoded(tuple(kept) + e.prompt_ids, e.response_ids))
        variant = f"recall:shots={shots},seed={seed},max={max_prefix_tokens}"
        return self._once(
            ("variant", variant), lambda: cached_stats(self.host, self.target, encoded, variant)
        )

    def argmax_ids(self) -> list[np.ndarray]:
        """The target's greedy prediction at every response position ([Z]'s zlib quirk decodes these)."""

        def compute() -> dict[str, np.ndarray]:
            model, pad = self.model(), self.host.tokenizer.pad_token_id
            model.to(self.host.device).eval()
            rows: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(self.samples)
            with torch.no_grad():
                for idx, batch in batches(self.encoded(), self.host.batch_size, pad, generator=None):
                    batch = to_device(batch, self.host.device)
                    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                    predicted = logits[:, :-1].argmax(-1).cpu().numpy()
                    keep = (batch["labels"][:, 1:] >= 0).cpu().numpy()
                    for row, i in enumerate(idx):
                        rows[i] = predicted[row][keep[row]]
            return _ragged(rows)

        spec = {"stage": "argmax", "model": self.target.key, "data": encoded_hash(self.encoded())}
        return self._once(("argmax",), lambda: _unragged(cached_arrays(self.host, "argmax", spec, compute)))

    # --- other models ------------------------------------------------------------------------------------
    def reference_logprob(self, name: str) -> np.ndarray:
        """Per-sample mean log-probability under a reference model (encoded with its own tokenizer)."""

        def compute() -> np.ndarray:
            reference = self.host.reference(name, self.target)
            tokenizer = models.load_tokenizer(reference.path)
            if tokenizer.get_vocab() == self.host.tokenizer.get_vocab():
                return mean_logprob(self.host.token_stats(reference, self.samples))
            encoded = self.host.encode(self.samples, tokenizer=tokenizer)
            return mean_logprob(cached_stats(self.host, reference, encoded, "plain", pad_id=tokenizer.pad_token_id))

        return self._once(("reference", name), compute)

    def shadow_logprobs(self, n_shadow: int, seed: int, recipe: ShadowRecipe) -> tuple[np.ndarray, np.ndarray]:
        """(in_mask, logprob), both (n_shadow, n_samples): shadow models trained on random halves of the
        population (the samples themselves), in complementary pairs so each sample is in exactly half."""

        def compute() -> tuple[np.ndarray, np.ndarray]:
            n = len(self.samples)
            in_mask = np.zeros((n_shadow, n), dtype=bool)
            for pair in range(n_shadow // 2):
                half = np.random.default_rng([seed, pair]).permutation(n)[: n // 2]
                in_mask[2 * pair, half] = True
                in_mask[2 * pair + 1] = ~in_mask[2 * pair]
            logprobs = np.empty((n_shadow, n))
            for s in range(n_shadow):
                data = [e for e, member in zip(self.samples, in_mask[s], strict=True) if member]
                label = f"shadow {s + 1}/{n_shadow} of {self.target.label}"
                shadow = self.host.shadow(self.target, data, recipe, label)
                logprobs[s] = mean_logprob(self.host.token_stats(shadow, self.samples))
            return in_mask, logprobs

        return self._once(("shadows", n_shadow, seed, recipe), compute)

    # --- white box ---------------------------------------------------------------------------------------
    def gradient_norms(self, p: float, reduce: Literal["mean", "global"]) -> np.ndarray:
        """Per sample, the p-norm of the gradient of its mean response-token loss w.r.t. all parameters:
        ``mean`` averages per-tensor norms (MIMIR), ``global`` takes the norm of all gradients together."""

        def compute() -> dict[str, np.ndarray]:
            model, pad = self.model(), self.host.tokenizer.pad_token_id
            model.to(self.host.device).eval()
            params = [q for q in model.parameters()]
            flags = [q.requires_grad for q in params]
            out = np.empty(len(self.samples))
            try:
                for q in params:
                    q.requires_grad_(True)
                with self.host.reporter.task(f"gradients of {self.target.label}", len(out)) as advance:
                    for i, e in enumerate(self.encoded()):
                        batch = to_device(collate([e], pad), self.host.device)
                        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                        grads = torch.autograd.grad(response_cross_entropy(logits[:, :-1], batch), params,
                                                    allow_unused=True)
                        norms = torch.stack([g.float().norm(p) for g in grads if g is not None])
                        out[i] = float(norms.mean() if reduce == "mean" else norms.norm(p))
                        advance(1)
            finally:
                for q, flag in zip(params, flags, strict=True):
                    q.requires_grad_(flag)
            return {"norms": out}

        spec = {"stage": "gradnorm", "model": self.target.key, "data": encoded_hash(self.encoded()),
                "p": p, "reduce": reduce}
        return self._once(("gradnorm", p, reduce),
                          lambda: cached_arrays(self.host, "gradnorm", spec, compute)["norms"])

    def perturbed_logprob(self, sigma: float, seed: int, block: int | None = None) -> np.ndarray:
        """Per-sample mean log-probability after adding N(0, σ²) noise (torch generator seeded ``seed``) to
        every weight, or only to transformer block ``block``'s; the weights are restored afterwards."""

        def compute() -> dict[str, np.ndarray]:
            model = self.model().to(self.host.device)
            scope = "all weights" if block is None else f"block {block}"
            with perturbed(model, sigma, seed, block):
                label = f"perturbing {self.target.label} ({scope}, seed {seed})"
                stats = length_sorted_stats(self.host, model, self.encoded(), label)
            return {"logprob": mean_logprob(stats)}

        spec = {"stage": "perturbed", "model": self.target.key, "data": encoded_hash(self.encoded()),
                "sigma": sigma, "seed": seed, "block": block}
        return self._once(("perturbed", sigma, seed, block),
                          lambda: cached_arrays(self.host, "perturbed", spec, compute)["logprob"])

    def mope(self, sigma: float, copies: int, block: int | None = None) -> np.ndarray:
        """MoPe, oriented: mean_k NLL(θ + ε_k) − NLL(θ) over seeds 1..copies (members sit in sharper minima)."""
        perturbed_mean = np.mean([self.perturbed_logprob(sigma, seed, block) for seed in range(1, copies + 1)], 0)
        return self.mean_logprob() - perturbed_mean

    # --- corpora -----------------------------------------------------------------------------------------
    def token_frequencies(self) -> np.ndarray:
        """Token counts over the reference corpus (the public split), as the target's tokenizer encodes it."""
        encoded = self.host.encode(self._corpus(Need.TOKEN_FREQUENCIES))

        def compute() -> dict[str, np.ndarray]:
            ids = np.fromiter((t for e in encoded for t in e.input_ids), dtype=np.int64)
            size = max(len(self.host.tokenizer), int(ids.max(initial=-1)) + 1)
            return {"counts": np.bincount(ids, minlength=size).astype(np.int64)}

        spec = {"stage": "token_frequencies", "data": encoded_hash(encoded)}
        return self._once(("frequencies",),
                          lambda: cached_arrays(self.host, "token_frequencies", spec, compute)["counts"])


def _ragged(rows: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    flat = np.concatenate(list(rows)) if rows else np.empty(0, dtype=np.int64)
    return {"offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), "values": flat}


def _unragged(arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    offsets, values = arrays["offsets"], arrays["values"]
    return [values[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
