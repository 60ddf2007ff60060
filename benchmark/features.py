"""Feature extractors and the store-backed feature cache.

Features of the private data are computed once per (extractor, data split) and reused by every
(defense, attack, seed) pair and every later run of the same suite: the cache key is the
extractor's ``key`` (name + weights hash) and the split's ``key`` (dataset, resolution, split).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from inversion_bench.store import Store

if TYPE_CHECKING:
    from inversion_bench.data import LabeledImages

log = logging.getLogger(__name__)


class FeatureExtractor:
    """Images in [0, 1] -> feature vectors; ``key`` identifies the network and its weights."""

    def __init__(self, key: str, fn: Callable[[Tensor], Tensor], module: nn.Module | None = None) -> None:
        self.key = key
        self._fn = fn
        self.module = module
        self.calls = 0  # number of batches extracted (tests count them)

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        self.calls += 1
        return self._fn(images).float().flatten(1)


def model_features(key: str, model: nn.Module) -> FeatureExtractor:
    """The penultimate features of a :class:`~inversion_bench.interfaces.Classifier`."""
    return FeatureExtractor(key, model.features, model)


def _load_features(path: Path) -> Tensor:
    feats = torch.load(path / "data.pt", map_location="cpu", weights_only=True)
    if not isinstance(feats, Tensor):
        raise TypeError(f"stored features are a {type(feats).__name__}, not a tensor")
    return feats


class FeatureCache:
    """Caches features of labelled data splits in memory and in the store."""

    def __init__(self, store: Store | None, device: torch.device, batch_size: int = 128,
                 progress: bool = False) -> None:
        self.store = store
        self.device = device
        self.batch_size = batch_size
        self.progress = progress
        self._memory: dict[tuple[str, str], Tensor] = {}

    def extract(self, extractor: FeatureExtractor, images: Tensor) -> Tensor:
        """Features of ``images`` (any device) in batches, returned on the CPU."""
        outs = []
        for start in range(0, images.shape[0], self.batch_size):
            batch = images[start : start + self.batch_size].to(self.device)
            outs.append(extractor(batch).cpu())
        if not outs:
            return torch.empty(0, 0)
        return torch.cat(outs)

    def of_split(self, extractor: FeatureExtractor, data: LabeledImages) -> Tensor:
        """Features of every image of ``data`` (row i = data image i); computed at most once."""
        data_key = getattr(data, "key", None)
        if data_key is None:
            raise ValueError(f"data split {data.name!r} has no cache key; the runner sets one")
        mem_key = (extractor.key, data_key)
        if mem_key in self._memory:
            return self._memory[mem_key]
        store_key = f"{data_key}-{extractor.key}".replace("/", "_").replace(":", "_")
        feats = None
        if self.store is not None:  # None when absent, or damaged (then quarantined by the store)
            feats = self.store.load("features", store_key, _load_features)
        if feats is None:
            outs = []
            batches = data.batches(self.batch_size)
            n_batches = (len(data) + self.batch_size - 1) // self.batch_size
            for images, _ in tqdm(batches, total=n_batches, disable=not self.progress,
                                  desc=f"features {data.name} [{extractor.key}]", leave=False):
                outs.append(extractor(images.to(self.device)).cpu())
            feats = torch.cat(outs)
            if self.store is not None:
                self.store.save_torch("features", store_key, feats,
                                      meta={"extractor": extractor.key, "data": data_key, "n": len(data)})
        self._memory[mem_key] = feats
        return feats
