"""Content-addressed store of products (models, priors, reconstructions, features).

Every product lives in ``<root>/<kind>/<key>/`` where ``key`` hashes everything that determines it
(its job's config, the keys of its inputs, plugin versions). A product folder is written under a
temporary name and renamed into place when complete, so a folder that exists is complete: this is
both the cache and ``--resume``.

Several processes, on several machines sharing the folder (NFS and the like), may write the same
product at once: each writes its own temporary folder (named after the host and process), the
first rename wins and the others discard theirs, so a product folder is never a mix of two writers.

Integrity: every product folder carries ``checksum.json`` (size and SHA-256 of each of its files),
written last inside the temporary folder, so it is renamed into place with the data. :meth:`Store.has`
verifies it (once per process and product); a product whose files do not match, or whose load fails
(:meth:`Store.load`, :meth:`Store.read`), is moved to ``<root>/corrupt/<kind>/<key>.<time>.<pid>/``
with a warning naming it and the reason, and is then absent: its caller recomputes it. Products
stored before checksums existed have none: they are loaded, and quarantined only if that fails.

Disk full: a write that fails for lack of space (ENOSPC, a quota, torch's failed zip write) removes
its temporary folder and raises :class:`~inversion_bench.errors.DiskFullError` naming the product
and the free space; the run stops and the next one resumes.

File modes: temporary folders and files are created private (0700/0600); what is renamed into place
gets the modes the user's umask gives a plain file or folder (:func:`~inversion_bench.paths.umask_mode`), so a
team sharing a run folder can read it.

Paths: kinds and keys are single folder names; :func:`inside` refuses any name that would leave its
folder (``..``, ``/``, a NUL byte, an empty or overlong name), with a ValueError naming it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch

from inversion_bench.errors import BenchError, ConfigError, disk_full
from inversion_bench.paths import inside, umask_mode

log = logging.getLogger(__name__)
T = TypeVar("T")

CHECKSUM_FILE = "checksum.json"
"""Written last into every product folder: ``{"algorithm": "sha256", "files": {name: {sha256, bytes}}}``."""
CORRUPT_KIND = "corrupt"
"""Quarantined products go to ``<root>/corrupt/<kind>/<key>.<time>.<pid>/`` (never deleted)."""
NOT_CORRUPTION = (MemoryError, ImportError, torch.OutOfMemoryError, ConfigError)
"""Errors of a load that say nothing about the stored files (the machine or the user's setup): re-raised."""


class CorruptProductError(BenchError):
    """A stored product could not be read; it was quarantined and is recomputed by the next run."""


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
        self._verified: set[tuple[str, str]] = set()

    def path(self, kind: str, key: str) -> Path:
        """``<root>/<kind>/<key>``; a kind or key that would leave its folder is a ValueError."""
        return inside(inside(self.root, kind, "store kind"), key, f"store key of {kind}")

    def has(self, kind: str, key: str) -> bool:
        """Whether the product is stored and intact (its checksums match; verified once per process).

        A product whose files do not match is quarantined (see :meth:`quarantine`): False.
        """
        path = self.path(kind, key)
        if not path.is_dir():
            return False
        if (kind, key) in self._verified:
            return True
        problem = verify_checksums(path)
        if problem is not None:
            self.quarantine(kind, key, problem)
            return False
        self._verified.add((kind, key))
        return True

    def read(self, kind: str, key: str, loader: Callable[[Path], T]) -> T:
        """``loader(path(kind, key))`` of an intact product.

        Raises:
            CorruptProductError: the product is absent, its checksums mismatch or ``loader`` raised
                (the product is quarantined first; errors in :data:`NOT_CORRUPTION` pass through).
        """
        if not self.has(kind, key):
            raise CorruptProductError(f"store product {kind}/{key} is not in {self.root} (missing, or "
                                      "quarantined as corrupt); run the suite again to recompute it")
        try:
            return loader(self.path(kind, key))
        except NOT_CORRUPTION:
            raise
        except Exception as exc:
            reason = _reason(exc)
            dest = self.quarantine(kind, key, reason)
            raise CorruptProductError(f"store product {kind}/{key} cannot be read ({reason}); moved to "
                                      f"{dest}; run the suite again to recompute it") from exc

    def load(self, kind: str, key: str, loader: Callable[[Path], T]) -> T | None:
        """Like :meth:`read`, but None when the product is absent or was just quarantined (recompute it)."""
        if not self.has(kind, key):
            return None
        try:
            return self.read(kind, key, loader)
        except CorruptProductError:
            return None

    def quarantine(self, kind: str, key: str, reason: str) -> Path | None:
        """Moves a damaged product to ``<root>/corrupt/<kind>/<key>.<time>.<pid>/`` with a warning.

        Returns the new folder (None when another process moved it first).
        """
        self._verified.discard((kind, key))
        src = self.path(kind, key)
        folder = inside(self.root / CORRUPT_KIND, kind, "store kind")
        folder.mkdir(parents=True, exist_ok=True)
        dest = inside(folder, f"{key}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}", "quarantine name")
        try:
            os.rename(src, dest)
        except FileNotFoundError:
            log.warning("store product %s/%s is corrupt (%s); another process moved it aside", kind, key, reason)
            return None
        except OSError:  # the same second in the same process: pick a free name
            dest = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=folder))
            dest.rmdir()
            os.rename(src, dest)
        log.warning("store product %s/%s is corrupt (%s); moved to %s, it will be recomputed", kind, key,
                    reason, dest)
        return dest

    @contextmanager
    def writing(self, kind: str, key: str) -> Iterator[Path]:
        """Yields a temporary folder; on success its checksums are written and it becomes
        ``path(kind, key)`` atomically.

        If another writer finished the same product first, its folder is kept (same key means
        same content) and this one is discarded.
        """
        final = self.path(kind, key)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix(key), suffix=".tmp", dir=final.parent))
        except OSError as exc:
            full = disk_full(exc, final)
            if full is None:
                raise
            raise full from exc
        try:
            umask_mode(tmp, folder=True)
            yield tmp
            write_checksums(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            full = disk_full(exc, final) if isinstance(exc, Exception) else None
            if full is None or full is exc:
                raise
            raise full from exc

    def save_torch(self, kind: str, key: str, obj: Any, meta: dict[str, Any] | None = None) -> Path:
        with self.writing(kind, key) as tmp:
            torch.save(obj, tmp / "data.pt")
            if meta is not None:
                (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        return self.path(kind, key)

    def load_torch(self, kind: str, key: str) -> Any:
        """The product's ``data.pt`` (tensors only). Raises :class:`CorruptProductError` (after
        quarantining it) when it cannot be read, or when it is absent."""
        return self.read(kind, key, lambda p: torch.load(p / "data.pt", map_location="cpu", weights_only=True))

    def load_meta(self, kind: str, key: str) -> dict[str, Any]:
        """The product's ``meta.json`` ({} when absent, or when unreadable: then quarantined)."""

        def meta(path: Path) -> dict[str, Any]:
            p = path / "meta.json"
            data = json.loads(p.read_text()) if p.exists() else {}
            if not isinstance(data, dict):
                raise ValueError(f"meta.json holds a {type(data).__name__}, not an object")
            return data

        return self.load(kind, key, meta) or {}

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


def _reason(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters)."""
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text[:300]}"


def _product_files(folder: Path) -> list[str]:
    """The files of a product folder (relative, ``/``-separated, sorted), its checksum file excepted."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.relative_to(folder).as_posix() != CHECKSUM_FILE)


def write_checksums(folder: Path) -> Path:
    """Writes ``checksum.json`` (size and SHA-256 of every file of ``folder``); call it last."""
    files = {name: {"sha256": file_sha256(folder / name, length=64), "bytes": (folder / name).stat().st_size}
             for name in _product_files(folder)}
    path = folder / CHECKSUM_FILE
    path.write_text(json.dumps({"algorithm": "sha256", "files": files}, indent=2, sort_keys=True))
    return path


def verify_checksums(folder: Path) -> str | None:
    """None when every file listed in ``folder``'s ``checksum.json`` has its size and SHA-256 (or when
    there is no checksum file: products stored before checksums existed); else the reason."""
    path = folder / CHECKSUM_FILE
    if not path.exists():
        return None
    try:
        files = json.loads(path.read_text())["files"]
        entries = [(str(name), str(v["sha256"]), int(v["bytes"])) for name, v in files.items()]
    except Exception as exc:
        return f"unreadable {CHECKSUM_FILE}: {_reason(exc)}"
    for name, digest, size in entries:
        f = folder / name
        if ".." in Path(name).parts or Path(name).is_absolute() or not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, {size} were written"
        if file_sha256(f, length=64) != digest:
            return f"{name} does not match its SHA-256"
    return None


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
