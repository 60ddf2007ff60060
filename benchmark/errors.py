"""Error types shared by the whole suite.

``ConfigError`` (and its subclasses) mean "the user's input is wrong": the CLI prints the message and
exits with code 2 before any expensive work starts. ``DivergedError`` marks a training run or attack
that produced NaN or inf values; the runner records the pair as failed with that reason.
``DiskFullError`` (a full disk or quota while writing a product or a record) stops the run: its pair
is recorded as failed when the record can still be written, the CLI prints the one-line message and
exits with code 2, and the next run resumes (:func:`disk_full`).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any


class BenchError(Exception):
    """Base class of every error raised on purpose by Inversion Bench."""


class ConfigError(BenchError):
    """Invalid user input (suite file, CLI option, plugin parameters). Exit code 2."""


class UnknownPluginError(ConfigError, KeyError):
    """A plugin name that no registry knows."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class MissingResourceError(ConfigError):
    """A data folder or weights file that the suite needs is not on disk."""


class DivergedError(BenchError):
    """Training or an attack produced NaN or inf values."""


class MetricUnavailableError(BenchError):
    """A metric cannot be computed for this pair; the message says why. ``details`` (what the metric found
    before it stopped: counts, skipped identities) are kept in the record like a result's."""

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = dict(details or {})


class AccessError(BenchError):
    """An attack tried more than its declared access level allows (gradients or parameters through a
    black-box or label-only oracle); its pair fails with this error."""


class DiskFullError(ConfigError):
    """No space left (or the quota exceeded) while writing ``path``; the message names the path and the
    free space. A ConfigError so that the CLI prints it in one line and exits with code 2: the operator
    frees space and runs again, which resumes (nothing partial is left in the store)."""

    def __init__(self, message: str, path: Path | str | None = None) -> None:
        super().__init__(message)
        self.path = path


_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
# what torch.save raises when a write of its zip writer fails (it drops the errno)
_TORCH_WRITE_FAILURES = ("PytorchStreamWriter failed writing", "unexpected pos", "file write failed")


def _is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception in its chain is ENOSPC/EDQUOT or torch's failed write."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, DiskFullError):
            return True
        if isinstance(cur, OSError) and cur.errno in _FULL_ERRNOS:
            return True
        text = str(cur)
        if isinstance(cur, RuntimeError) and any(t in text for t in _TORCH_WRITE_FAILURES):
            return True
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def free_space(path: Path | str) -> str:
    """``"<n> bytes free on <folder>"`` for the nearest existing folder of ``path`` (or why unknown)."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        return f"free space of {folder} unknown ({exc.strerror or exc})"
    return f"{free} bytes ({free / 2**20:.1f} MiB) free on {folder}"


def disk_full(exc: BaseException, path: Path | str | None) -> DiskFullError | None:
    """The :class:`DiskFullError` of ``exc`` (naming ``path``, or the file the OSError names) when ``exc``
    was caused by a full disk or quota, else None. A DiskFullError is returned as it is."""
    if isinstance(exc, DiskFullError):
        return exc
    if not _is_disk_full(exc):
        return None
    filename = getattr(exc, "filename", None)
    where = Path(path) if path else Path(os.fsdecode(filename)) if isinstance(filename, str | bytes) else None
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    shown = where if where is not None else "the run folder"
    space = free_space(where) if where is not None else "free space unknown"
    return DiskFullError(f"no space left on device while writing {shown} ({space}; {type(exc).__name__}: {first}); "
                         "free some space and run again: the run resumes where it stopped", where)
