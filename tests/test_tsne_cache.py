"""The report's t-SNE cache (leaderboard/tsne_cache.py) and per-figure skipping (``--skip-figure``)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from inversion_bench.cli import main
from inversion_bench.figure_options import figure_names
from inversion_bench.leaderboard import report_figures
from inversion_bench.leaderboard.tsne_cache import cached_tsne, tsne_key


def _counting():
    calls = []

    def compute(x, seed, perplexity):
        calls.append((x.shape, seed, perplexity))
        return np.stack([x[:, 0], x[:, 1] * seed + perplexity], 1).astype(np.float32)

    return compute, calls


def test_the_embedding_is_computed_once_per_inputs(tmp_path: Path):
    x = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32)
    compute, calls = _counting()
    first, hit = cached_tsne(x, tmp_path, compute, seed=1)
    assert not hit and len(calls) == 1 and len(list(tmp_path.glob("*.npy"))) == 1
    again, hit = cached_tsne(x.copy(), tmp_path, compute, seed=1)
    assert hit and len(calls) == 1 and np.array_equal(first, again)
    cached_tsne(x, tmp_path, compute, seed=2)  # another setting
    y = x.copy()
    y[3, 2] += 1e-3
    cached_tsne(y, tmp_path, compute, seed=1)  # other features
    assert len(calls) == 3 and len(list(tmp_path.glob("*.npy"))) == 3
    assert tsne_key(x, 1, 30.0) != tsne_key(x, 1, 20.0) != tsne_key(x[:6], 1, 20.0)


def test_a_broken_or_missing_cache_only_costs_the_recomputation(tmp_path: Path):
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    compute, calls = _counting()
    (tmp_path / f"{tsne_key(x, 0, 30.0)}.npy").write_bytes(b"not numpy")
    emb, hit = cached_tsne(x, tmp_path, compute)
    assert not hit and emb.shape == (10, 2) and len(calls) == 1
    assert cached_tsne(x, tmp_path, compute)[1]  # rewritten
    assert not cached_tsne(x, None, compute)[1] and len(calls) == 2  # no folder: no cache
    blocked = tmp_path / "file"
    blocked.write_text("")
    emb, hit = cached_tsne(x, blocked / "sub", compute)  # cannot be created: the figure still gets its points
    assert not hit and emb.shape == (10, 2)


def test_skip_figure_names_and_aliases():
    assert figure_names(["tsne", "toy2d"]) == {"embedding", "toy2d"}
    with pytest.raises(ValueError, match="--skip-figure tnse: no such figure; choices: privacy_utility, "):
        figure_names(["tnse"])


def test_skipped_figures_are_not_drawn(monkeypatch, tmp_path: Path):
    drawn = []
    for name in ("privacy_utility", "qualitative", "embedding", "gradient_stability", "toy2d"):
        monkeypatch.setattr(report_figures, name, lambda *a, _n=name, **k: drawn.append(_n))
    report = SimpleNamespace(board=None, out_dir=tmp_path, figures=[], notes=[])
    report_figures.draw_all(report, [tmp_path], [], contexts=(), grid_attack=None, grid_identities=8,
                            tsne_identities=20, tsne_images_per_identity=30, skip=["tsne", "toy2d"])
    assert drawn == ["privacy_utility", "qualitative", "gradient_stability"] and not report.notes


def test_an_unknown_figure_is_refused_with_the_choices(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["report", str(tmp_path), "--skip-figure", "tnse"])
    assert exc.value.code == 2
    assert "invalid choice: 'tnse'" in capsys.readouterr().err
