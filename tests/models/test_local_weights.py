"""Converted weights for the local backend (``weights=``) and the batched numpy sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from testtime.errors import UserError
from testtime.models.base import GenerationRequest
from testtime.models.llamabatch import sample_softmax
from testtime.models.registry import load_model

COUNT = GenerationRequest(prompt="Count from 1 to 20, separated by commas.", prefix="1, 2, 3,", max_tokens=12,
                          temperature=0.0)


def _reference(logits: np.ndarray, temperature: float, u: float) -> tuple[int, np.ndarray]:
    """Inverse CDF in float64 over the whole row (slow, obviously right)."""
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    cdf = np.cumsum(p) / p.sum()
    return int(np.searchsorted(cdf, u, side="right")), cdf


def test_sample_softmax_draws_the_token_whose_cdf_interval_holds_the_draw() -> None:
    rng = np.random.default_rng(7)
    vocab = 1000  # not a multiple of the 256-entry blocks: the last block is short
    logits = rng.normal(0, 3, size=(6, vocab)).astype(np.float32)
    logits[2, 300:] = -np.inf  # a masked tail must never be drawn
    temps = [0.3, 0.7, 1.0, 1.5, 2.0, 0.05]
    mismatches = 0
    for _ in range(200):
        draws = [float(u) for u in rng.random(6)]
        got = sample_softmax(logits.copy(), temps, draws)
        for j, (tok, u) in enumerate(zip(got, draws, strict=True)):
            want, cdf = _reference(logits[j], temps[j], u)
            assert 0 <= tok < vocab and np.isfinite(logits[j, tok])
            if tok != want:
                # float32 block sums may only move a draw that sits on an interval's edge
                mismatches += 1
                lo = cdf[tok - 1] if tok else 0.0
                assert lo - 1e-5 <= u <= cdf[tok] + 1e-5
    assert mismatches <= 2
    assert all(t < 300 for t in sample_softmax(np.tile(logits[2], (50, 1)), [1.0] * 50,
                                                [float(u) for u in np.linspace(0, 0.999999, 50)]))


def test_sample_softmax_frequencies_follow_the_temperature() -> None:
    logits = np.log(np.array([[0.5, 0.3, 0.2] + [1e-12] * 509], dtype=np.float32))
    draws = [float(u) for u in np.random.default_rng(1).random(4000)]
    cold = np.bincount(sample_softmax(np.repeat(logits, 4000, axis=0), [0.5] * 4000, draws), minlength=3)
    warm = np.bincount(sample_softmax(np.repeat(logits, 4000, axis=0), [1.0] * 4000, draws), minlength=3)
    assert abs(warm[0] / 4000 - 0.5) < 0.03 and abs(warm[2] / 4000 - 0.2) < 0.03
    p = np.array([0.5, 0.3, 0.2]) ** 2
    assert abs(cold[0] / 4000 - p[0] / p.sum()) < 0.03  # T=0.5 squares the probabilities


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from testtime.models.llamacpp import CACHE_ENV

    pytest.importorskip("llama_cpp")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    return tmp_path


async def test_local_defaults_to_q8_0_converted_once_into_the_cache_and_still_counts(cache: Path) -> None:
    from testtime.models.llamacpp import embedded_gguf_path

    model = load_model("local?threads=1&n_ctx=1024&n_seq=4")
    files = list((cache / "gguf").glob("*.q8_0.gguf"))
    assert len(files) == 1 and model.engine.path == files[0]
    assert files[0].read_bytes()[:4] == b"GGUF"
    assert files[0].stat().st_size > 1.3 * embedded_gguf_path().stat().st_size  # 8-bit weights, not 4-bit
    stamp = files[0].stat().st_mtime_ns
    again = load_model("local?weights=q8_0&threads=1&n_ctx=1024&n_seq=4")
    assert again.engine is model.engine and files[0].stat().st_mtime_ns == stamp  # reused, not rewritten
    assert not list((cache / "gguf").glob("*.part"))
    shipped = load_model("local?weights=file&threads=1&n_ctx=1024&n_seq=4")
    assert shipped.engine.path == embedded_gguf_path() and shipped.engine is not model.engine
    for m in (model, shipped):
        out = await m.generate(COUNT)
        assert out[0].text.lstrip().startswith("4, 5")
        assert m.spec == "local"


def test_bad_weights_and_an_unwritable_cache_are_user_errors_but_the_default_falls_back(
        cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from testtime.models.llamacpp import CACHE_ENV, embedded_gguf_path

    for bad in ("local?weights=q4_0", "local?weights=", "local?weights=bf17"):
        with pytest.raises(UserError, match="weights"):
            load_model(bad)
    blocker = cache / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv(CACHE_ENV, str(blocker))
    with pytest.raises(UserError, match=CACHE_ENV):
        load_model("local?weights=bf16&threads=1")
    with caplog.at_level("WARNING"):
        model = load_model("local?threads=1&n_ctx=1024&n_seq=3")
    assert model.engine.path == embedded_gguf_path()
    assert "shipped Q4_1" in caplog.text and CACHE_ENV in caplog.text


async def test_top_p_below_one_still_samples_each_sequence_with_its_own_seed() -> None:
    pytest.importorskip("llama_cpp")
    model = load_model("local", n_threads=1)
    for top_p in (1.0, 0.9):  # 1.0: the numpy pass; 0.9: a llama.cpp sampler chain
        req = GenerationRequest(prompt="Write one sentence about a cat.", n=4, max_tokens=12, temperature=1.0,
                                top_p=top_p, seed=21)
        gens = await model.generate(req)
        assert len(gens) == 4 and all(g.usage.output_tokens >= 1 and g.text for g in gens)
        assert len({g.text for g in gens}) >= 3  # seeds 21..24 draw different samples
