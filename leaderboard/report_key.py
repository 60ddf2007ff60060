"""The report's content key: a report is rebuilt only when its inputs changed.

:func:`report_key` hashes everything a report folder depends on:

* each run folder's records, those of other judges (``records/judges/*/``) included (file names and
  bytes; a record carries the store ``keys`` of the products its figures read, so a recomputed target or
  reconstruction changes its record too) and its ``suite.json`` (the default baseline and the report
  settings come from there),
* the report options (run folders, output folder, baseline, figures on/off, grid attack and size,
  t-SNE sizes),
* the report code: the source files of this package (``inversion_bench.leaderboard``) and the
  package version.

:func:`~inversion_bench.leaderboard.report.build_report` writes ``<out>/report.key`` (the key and the
files it wrote) after a report whose every figure was drawn; ``bench run`` with nothing to run skips
the report when :func:`up_to_date` finds the same key and every file still there. ``bench report``
always rebuilds. Only the standard library is imported here, so that the check costs milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPORT_KEY = "report.key"
"""File in the report folder: ``{"key": ..., "files": [paths relative to the folder]}``."""

REPORT_VERSION = 1
"""Bump to invalidate every existing report key (e.g. when a figure's data source outside this package changes)."""

DEFAULT_OPTIONS: dict[str, Any] = {"figures": True, "grid_attack": None, "grid_identities": 8,
                                   "tsne_identities": 20, "tsne_images_per_identity": 30, "baseline": None,
                                   "table": None, "published": None, "skip_figures": []}
"""The options of :func:`~inversion_bench.leaderboard.report.build_report` that change what it writes."""


def _code_digest() -> bytes:
    from inversion_bench import __version__

    h = hashlib.sha256(f"{__version__}/{REPORT_VERSION}".encode())
    for p in sorted(Path(__file__).resolve().parent.glob("*.py")):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.digest()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b"\0missing"


def report_key(run_dirs: Sequence[str | Path], out_dir: str | Path | None = None, **options: Any) -> str:
    """The hash of a report's inputs (records, ``suite.json``, ``options``, report code); see the module."""
    unknown = set(options) - set(DEFAULT_OPTIONS)
    if unknown:
        raise TypeError(f"report_key: unknown option(s) {sorted(unknown)}")
    dirs = [Path(d) for d in run_dirs]
    out = Path(out_dir) if out_dir else dirs[0] / "leaderboard"
    h = hashlib.sha256(_code_digest())
    settings = {"run_dirs": [str(d.resolve()) for d in dirs], "out": str(out.resolve()),
                **DEFAULT_OPTIONS, **options}
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for i, d in enumerate(dirs):
        for p in [d / "suite.json", *sorted((d / "records").glob("*.json")),
                  *sorted((d / "records" / "judges").glob("*/*.json"))]:  # other judges (bench rescore)
            h.update(f"\0{i}/{p.relative_to(d).as_posix()}\0".encode())
            h.update(hashlib.sha256(_read(p)).digest())
    return h.hexdigest()[:32]


def up_to_date(out_dir: str | Path, key: str) -> bool:
    """Whether ``out_dir`` holds a complete report of ``key`` (same key, every file it wrote still there)."""
    out = Path(out_dir)
    try:
        saved = json.loads((out / REPORT_KEY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(saved, dict) or saved.get("key") != key:
        return False
    files = saved.get("files")
    return isinstance(files, list) and bool(files) and all((out / str(f)).is_file() for f in files)


def forget(out_dir: str | Path) -> None:
    """Removes ``out_dir/report.key`` (before a rebuild: an interrupted one must not look up to date)."""
    try:
        (Path(out_dir) / REPORT_KEY).unlink()
    except FileNotFoundError:
        pass


def save(out_dir: str | Path, key: str, files: Iterable[str | Path]) -> Path:
    """Writes ``out_dir/report.key`` (atomically) naming ``files`` relative to ``out_dir``."""
    out = Path(out_dir)
    rel = []
    for f in files:  # relative to out where possible; an absolute path otherwise (out / absolute is absolute)
        p = Path(f)
        if p.is_relative_to(out):
            rel.append(p.relative_to(out).as_posix())
        elif p.resolve().is_relative_to(out.resolve()):
            rel.append(p.resolve().relative_to(out.resolve()).as_posix())
        else:
            rel.append(str(p.resolve()))
    path = out / REPORT_KEY
    tmp = out / f".{REPORT_KEY}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"key": key, "files": sorted(set(rel))}, indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return path
