"""Content-addressed store of products (models, priors, reconstructions, features).

Every product lives in ``<root>/<kind>/<key>/`` where ``key`` hashes everything that determines it
(its job's config, the keys of its inputs, plugin versions). A product folder is written under a
temporary name and renamed into place when complete, so a folder that exists is complete: this is
both the cache and ``--resume``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_key(obj: Any, length: int = 16) -> str:
    """A short stable hash of a JSON-able object (dict keys order-independent)."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def file_sha256(path: Path, length: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


class Store:
    """Product folders keyed by content hash under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def has(self, kind: str, key: str) -> bool:
        return self.path(kind, key).is_dir()

    @contextmanager
    def writing(self, kind: str, key: str) -> Iterator[Path]:
        """Yields a temporary folder; on success it becomes ``path(kind, key)`` atomically.

        If another writer finished the same product first, its folder is kept (same key means
        same content) and this one is discarded.
        """
        final = self.path(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=final.parent))
        try:
            yield tmp
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def save_torch(self, kind: str, key: str, obj: Any, meta: dict[str, Any] | None = None) -> Path:
        with self.writing(kind, key) as tmp:
            torch.save(obj, tmp / "data.pt")
            if meta is not None:
                (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        return self.path(kind, key)

    def load_torch(self, kind: str, key: str) -> Any:
        return torch.load(self.path(kind, key) / "data.pt", map_location="cpu", weights_only=True)

    def load_meta(self, kind: str, key: str) -> dict[str, Any]:
        p = self.path(kind, key) / "meta.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def clean_partial(self) -> int:
        """Removes temporary folders left by killed runs; returns how many."""
        n = 0
        if not self.root.is_dir():
            return 0
        for kind_dir in self.root.iterdir():
            if kind_dir.is_dir():
                for p in kind_dir.glob(".*.tmp"):
                    shutil.rmtree(p, ignore_errors=True)
                    n += 1
        return n
