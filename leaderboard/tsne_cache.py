"""The report's t-SNE embeddings, cached by their inputs.

A t-SNE of a few hundred points takes seconds to minutes per defense and is redrawn with every report.
Its result depends only on the features, the settings (seed, perplexity) and scikit-learn's version, so
it is stored under the hash of those in the run folder (``<run folder>/cache/tsne/<key>.npy``) and read
back while they stay the same. A cache that cannot be read or written only costs the recomputation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CACHE_DIR = Path("cache") / "tsne"
"""Where in a run folder the embeddings are kept."""


def tsne_key(features: np.ndarray, seed: int, perplexity: float) -> str:
    """The hash of the embedding's inputs: the float32 features (shape and bytes), the settings and
    scikit-learn's version."""
    import sklearn

    x = np.ascontiguousarray(features, dtype=np.float32)
    h = hashlib.sha256(json.dumps({"shape": list(x.shape), "seed": seed, "perplexity": perplexity,
                                   "sklearn": sklearn.__version__, "init": "pca"}, sort_keys=True).encode())
    h.update(x.tobytes())
    return h.hexdigest()[:32]


def cached_tsne(features: np.ndarray, folder: Path | None, compute: Callable[..., np.ndarray], seed: int = 0,
                perplexity: float = 30.0) -> tuple[np.ndarray, bool]:
    """``(embedding [N, 2], whether it came from the cache)`` of ``features`` [N, D].

    Args:
        features: the points.
        folder: the cache folder (None: no cache).
        compute: ``compute(features, seed=..., perplexity=...)``, the t-SNE itself.
        seed, perplexity: t-SNE settings (part of the key).
    """
    key = tsne_key(features, seed, perplexity)
    path = folder / f"{key}.npy" if folder is not None else None
    if path is not None and path.is_file():
        try:
            emb = np.load(path, allow_pickle=False)
            if emb.shape == (features.shape[0], 2) and np.isfinite(emb).all():
                return emb, True
            log.warning("t-SNE cache %s has the wrong shape %s; recomputing", path, emb.shape)
        except (OSError, ValueError) as exc:
            log.warning("t-SNE cache %s unreadable (%s); recomputing", path, exc)
    emb = compute(features, seed=seed, perplexity=perplexity)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.save(f, np.asarray(emb, dtype=np.float32), allow_pickle=False)
            os.replace(tmp, path)
        except OSError as exc:  # a read-only run folder: no cache, same figure
            log.info("t-SNE not cached in %s: %s", path.parent, exc)
    return emb, False
