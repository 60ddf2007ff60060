"""Result records: one JSON file per finished (defense, attack, seed).

Records are the truth of a run: the leaderboard and the MLflow mirror are rebuilt from them alone.
Each is written atomically (temporary file in the same folder, then ``os.replace``), so a killed
run never leaves a half-written record; the file gets the mode the umask gives a new file (not
``mkstemp``'s 0600), and a full disk is a :class:`~inversion_bench.errors.DiskFullError` naming it.
A record file that cannot be read anyway (copied half, edited by hand, not a JSON object, a number no
float holds such as a metric of 10^400) is named
in a warning and skipped by :func:`load_records`; ``bench run`` moves it to ``records/corrupt/``
(:func:`move_aside`, never deleted) and runs its pair again.

A record (``schema_version`` 2; the model is :class:`~inversion_bench.record_model.Record`, and
:func:`~inversion_bench.record_model.upgrade` reads every older record) holds::

    schema_version, suite, suite_hash, run_dir
    defense, defense_label, defense_plugin, defense_params, defense_index
    attack, attack_label, attack_plugin, attack_params, attack_index
    seed, baseline                      # baseline = the suite's baseline defense id
    status                              # "ok" | "failed"
    error, traceback                    # for failed pairs: the reason and the traceback
    metrics                             # name -> float ("test_accuracy" always present when trained)
    directions                          # name -> "higher" | "lower" (better for the defender)
    metric_info                         # output name -> its plugin's declaration: unit, better, scope, ...
    per_identity                        # output name -> {"values": identity -> value} (declared per_identity)
    worst_case_metric                   # the output the worst case takes (attack's or the suite's report:)
    metric_details                      # metric plugin name -> sample counts, provenance
    metric_errors, metric_scopes        # output name -> why it has no value / "attack" | "target"
    keys                                # store keys of target, evaluator, prior, reconstruction
    config_hash, code_version, plugin_versions, timings (seconds), device, created (ISO time)
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from inversion_bench.errors import disk_full
from inversion_bench.paths import check_name, inside, umask_mode
from inversion_bench.record_model import load_record, upgrade

log = logging.getLogger(__name__)

CORRUPT_DIR = "corrupt"
"""Unreadable records are moved to ``records/corrupt/`` by ``bench run`` (never deleted)."""


def record_filename(defense: str, attack: str, seed: int) -> str:
    """``<defense>__<attack>__seed<seed>.json``; a ValueError when the ids would not make one plain
    file name (a ``/``, ``..``, NUL byte, over 255 bytes)."""
    return check_name(f"{defense}__{attack}__seed{seed}.json", f"record file name of ({defense!r}, {attack!r})")


def _json_safe(value: Any) -> Any:
    """Replaces NaN/inf floats by None (JSON has no NaN) so no record is silently invalid."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_json_atomic(path: Path, data: Any) -> None:
    """Writes ``data`` as JSON to ``path`` atomically (temp file + rename), with the umask's file mode.

    Raises:
        DiskFullError: no space left (or over quota); the temporary file is removed.
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        umask_mode(tmp)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(_json_safe(data), fh, indent=2, sort_keys=True, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        full = disk_full(exc, path) if isinstance(exc, Exception) else None
        if full is None or full is exc:
            raise
        raise full from exc


def write_record(records_dir: Path, record: dict[str, Any]) -> Path:
    """Writes ``record`` atomically as ``records_dir/<record_filename>`` (checked to stay in ``records_dir``), at
    the current schema version (a record of an older one is upgraded; see :mod:`~inversion_bench.record_model`).

    Raises:
        ValueError: the record does not validate as a :class:`~inversion_bench.record_model.Record`.
    """
    path = inside(records_dir, record_filename(record["defense"], record["attack"], record["seed"]), "record file")
    current = upgrade(record)
    load_record(current)
    write_json_atomic(path, current)
    return path


def read_record(path: Path) -> dict[str, Any]:
    """One record file.

    Raises:
        ValueError: it cannot be read, is not JSON, not a JSON object, or lacks defense/attack/seed
            (the message is the reason, without the path).
    """
    try:
        with open(path, encoding="utf-8") as fh:
            rec = json.load(fh)
    except (OSError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise ValueError(f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}") from None
    if not isinstance(rec, dict):
        raise ValueError(f"holds a JSON {type(rec).__name__}, not an object")
    missing = [k for k in ("defense", "attack", "seed") if k not in rec]
    if missing:
        raise ValueError(f"lacks {', '.join(missing)}")
    if not isinstance(rec["defense"], str) or not isinstance(rec["attack"], str) or not isinstance(rec["seed"], int):
        raise ValueError("defense and attack must be strings and seed an integer")
    bad = unfit_number(rec)
    if bad is not None:
        raise ValueError(f"{bad[0]}: {str(bad[1])[:20]}{'...' if len(str(bad[1])) > 20 else ''} is not a finite "
                         "number a float can hold (records are written with finite numbers only: edited or damaged)")
    return rec


def unfit_number(value: Any, where: str = "") -> tuple[str, int | float] | None:
    """The first number in a record that no finite float holds (an integer beyond about 1.8e308, inf or
    nan: ``json`` reads ``1e400`` as inf) as (field path, value), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "(top level)", value
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 1000:
        try:
            float(value)
        except OverflowError:
            return where or "(top level)", value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = unfit_number(item, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}".lstrip("."))
        if found is not None:
            return found
    return None


def load_records(records_dir: Path, unreadable: list[tuple[Path, str]] | None = None) -> list[dict[str, Any]]:
    """All readable records in ``records_dir`` (sorted by defense index, attack index, seed).

    A file that cannot be read (:func:`read_record`) is skipped: appended as ``(path, reason)`` to
    ``unreadable`` when given (the caller reports it), else named in a warning.
    """
    out = []
    for p in sorted(Path(records_dir).glob("*.json")):
        try:
            rec = read_record(p)
        except ValueError as exc:
            if unreadable is not None:
                unreadable.append((p, str(exc)))
            else:
                log.warning("record %s cannot be read (%s); skipped", p, exc)
            continue
        rec.setdefault("_path", str(p))
        out.append(rec)
    out.sort(key=lambda r: (r.get("defense_index", 0), r.get("attack_index", 0), r.get("seed", 0)))
    return out


def move_aside(path: Path) -> Path:
    """Moves the record file ``path`` to ``<its folder>/corrupt/<name>.<time>[.n].json``; returns the new path."""
    path = Path(path)
    folder = path.parent / CORRUPT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{path.stem}.{time.strftime('%Y%m%dT%H%M%S')}"
    dest, n = inside(folder, f"{stem}.json", "moved record"), 1
    while dest.exists():
        dest, n = inside(folder, f"{stem}.{n}.json", "moved record"), n + 1
    os.rename(path, dest)
    return dest
