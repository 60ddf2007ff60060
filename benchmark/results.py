"""Result records: one JSON file per finished (defense, attack, seed).

Records are the truth of a run: the leaderboard and the MLflow mirror are rebuilt from them alone.
Each is written atomically (temporary file in the same folder, then ``os.replace``), so a killed
run never leaves a half-written record.

A record (``schema`` 1) holds::

    schema, suite, suite_hash, run_dir
    defense, defense_label, defense_plugin, defense_params, defense_index
    attack, attack_label, attack_plugin, attack_params, attack_index
    seed, baseline                      # baseline = the suite's baseline defense id
    status                              # "ok" | "failed"
    error, traceback                    # for failed pairs: the reason and the traceback
    metrics                             # name -> float ("test_accuracy" always present when trained)
    directions                          # name -> "higher" | "lower" (better for the defender)
    metric_details                      # name -> per-identity values, sample counts, provenance
    keys                                # store keys of target, evaluator, prior, reconstruction
    config_hash, code_version, plugin_versions, timings (seconds), device, created (ISO time)
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

RECORD_SCHEMA = 1


def record_filename(defense: str, attack: str, seed: int) -> str:
    return f"{defense}__{attack}__seed{seed}.json"


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
    """Writes ``data`` as JSON to ``path`` atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(_json_safe(data), fh, indent=2, sort_keys=True, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_record(records_dir: Path, record: dict[str, Any]) -> Path:
    path = records_dir / record_filename(record["defense"], record["attack"], record["seed"])
    write_json_atomic(path, {"schema": RECORD_SCHEMA, **record})
    return path


def load_records(records_dir: Path) -> list[dict[str, Any]]:
    """All records in ``records_dir`` (sorted by defense index, attack index, seed)."""
    out = []
    for p in sorted(Path(records_dir).glob("*.json")):
        with open(p, encoding="utf-8") as fh:
            rec = json.load(fh)
        rec.setdefault("_path", str(p))
        out.append(rec)
    out.sort(key=lambda r: (r.get("defense_index", 0), r.get("attack_index", 0), r.get("seed", 0)))
    return out
