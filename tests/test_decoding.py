"""Decoding models that have no HF ``generate`` (a defense's ensemble or logits wrapper): greedy continuations and
samples must be exactly what HF ``generate`` / the cached sampler give for the model inside, and the ensemble must
pass its members' KV caches on (so decoding it costs one step per member, not a reread of the sequence)."""

from __future__ import annotations

import copy
from typing import Any

import torch

from kdbench.distill.sampling import PolicyPart, sample
from kdbench.training.loop import generate
from plugins.defenses.ensemble import EnsembleLM
from tests.distill_helpers import LogitsOnly, tiny_model

PROMPTS = [[5, 9, 11], [7], [3, 4, 5, 6, 8], [12, 2]]  # different lengths: padding must not shift positions
CPU = torch.device("cpu")


def greedy_of(model: Any, eos_id: int) -> list[list[int]]:
    return generate(model, PROMPTS, max_new_tokens=6, pad_id=0, eos_id=eos_id, device=CPU, batch_size=4)


def test_greedy_without_generate_is_what_hf_generate_decodes() -> None:
    """HF ``generate`` on the model is the reference; an ensemble of two copies of it (the same distribution) and a
    logits-only wrapper of it, decoded by kdbench's own loop (cached and uncached), must give the same tokens, also
    when a row stops early at EOS (EOS = the token the reference emits second in row 0)."""
    model = tiny_model(seed=4).eval()
    reference = greedy_of(model, eos_id=-1)
    assert all(len(row) == 6 for row in reference) and len({tuple(r) for r in reference}) > 1
    ensemble = EnsembleLM([model, copy.deepcopy(model)])
    assert greedy_of(ensemble, eos_id=-1) == reference
    assert greedy_of(LogitsOnly(model), eos_id=-1) == reference
    eos = reference[0][1]
    stopped = greedy_of(model, eos_id=eos)
    assert stopped[0] == reference[0][: reference[0].index(eos)]  # cut before EOS, as HF generate stops
    assert greedy_of(ensemble, eos_id=eos) == greedy_of(LogitsOnly(model), eos_id=eos) == stopped


def test_the_ensemble_samples_with_its_members_caches() -> None:
    """Same generator, same draws: the ensemble of two copies samples what the model alone samples."""
    model = tiny_model(seed=5).eval()
    kw = {"max_new_tokens": 6, "pad_id": 0, "eos_id": -1, "device": CPU}
    alone = sample([PolicyPart(model)], PROMPTS, generator=torch.Generator().manual_seed(3), **kw)
    ensemble = EnsembleLM([model, copy.deepcopy(model)])
    assert sample([PolicyPart(ensemble)], PROMPTS, generator=torch.Generator().manual_seed(3), **kw) == alone


def test_the_ensembles_cached_steps_equal_rereading_the_sequence() -> None:
    """Two different members: logits of the last position, token by token with the returned caches, equal the
    logits of one forward over the whole sequence (a cache handed to the wrong member would not)."""
    ensemble = EnsembleLM([tiny_model(seed=6).eval(), tiny_model(seed=7).eval()])
    ids = torch.tensor([[3, 4, 5, 6, 8, 9]])
    with torch.no_grad():
        whole = ensemble(input_ids=ids).logits[0]
        assert ensemble(input_ids=ids).cache is None  # no cache unless asked for
        out = ensemble(input_ids=ids[:, :3], use_cache=True)
        steps = [out.logits[0, -1]]
        for t in range(3, ids.shape[1]):
            assert out.cache is not None and len(out.cache) == 2
            out = ensemble(input_ids=ids[:, t : t + 1], cache=out.cache, use_cache=True,
                           attention_mask=torch.ones((1, t + 1), dtype=torch.long))
            steps.append(out.logits[0, -1])
    torch.testing.assert_close(torch.stack(steps), whole[2:], rtol=1e-4, atol=1e-5)


def test_a_pass_through_wrapper_is_handed_no_cache_before_there_is_one() -> None:
    """A wrapper whose forward takes ``**kwargs`` (no ``cache`` parameter) passes them on to the model inside. The
    first step has no cache yet, so it must name none: ``past_key_values=None`` handed to a transformers 5 model is
    a deprecated name (a FutureWarning per call), and naming ``cache`` would be wrong for older ones. Later steps
    pass the cache the model returned, so the tokens are what HF ``generate`` decodes."""
    model = tiny_model(seed=4).eval()
    calls: list[set[str]] = []

    class PassThrough(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, **kwargs: Any) -> Any:
            calls.append(set(kwargs))
            return self.inner(**kwargs)

    assert greedy_of(PassThrough(), eos_id=-1) == greedy_of(model, eos_id=-1)
    assert calls and not calls[0] & {"cache", "past_key_values"}
