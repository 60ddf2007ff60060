"""Content-addressed store of products (models, priors, reconstructions, features).

Every product lives in ``<root>/<kind>/<key>/`` where ``key`` hashes everything that determines it
(its job's config, the keys of its inputs, plugin versions). A product folder is written under a
temporary name and renamed into place when complete, so a folder that exists is complete: this is
both the cache and ``--resume``.

Several processes, on several machines sharing the folder (NFS and the like), may write the same
product at once: each writes its own temporary folder (named after the host and process), the
first rename wins and the others discard theirs, so a product folder is never a mix of two writers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
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


STALE_TMP_SECONDS = 3600.0
"""A temporary product folder of another host untouched this long is a leftover (writes take seconds)."""


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
        tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix(key), suffix=".tmp", dir=final.parent))
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

    def clean_partial(self, max_age_s: float = STALE_TMP_SECONDS) -> int:
        """Removes temporary folders left by killed writers; returns how many.

        A folder is removed when its writer is gone: a process of this host that no longer runs, or
        (another host, or an unknown writer) a folder untouched for ``max_age_s`` seconds. Folders
        of live writers, e.g. Ray workers of a run in progress, are kept.
        """
        n = 0
        if not self.root.is_dir():
            return 0
        now = time.time()
        host = _host()
        for kind_dir in self.root.iterdir():
            if kind_dir.is_dir():
                for p in kind_dir.glob(".*.tmp"):
                    try:
                        age = now - p.stat().st_mtime
                    except OSError:
                        continue
                    if tmp_is_stale(p.name, host, age, max_age_s, _pid_alive):
                        shutil.rmtree(p, ignore_errors=True)
                        n += 1
        return n


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def tmp_prefix(key: str) -> str:
    """The name prefix of a temporary product folder: ``.<key>.<host>.<pid>.``."""
    return f".{key}.{_host()}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tmp_is_stale(name: str, host: str, age_s: float, max_age_s: float, pid_alive) -> bool:
    """Whether the temporary folder ``name`` was left by a writer that is gone.

    ``name`` is ``.<key>.<host>.<pid>.<random>.tmp`` (older runs: ``.<key>.<random>.tmp``).
    """
    parts = name.split(".")
    if len(parts) >= 6 and parts[-3].isdigit() and parts[-4] == host:
        return not pid_alive(int(parts[-3]))
    return age_s > max_age_s
