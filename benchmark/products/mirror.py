"""The MLflow mirror of a record: one MLflow run per record, with the attack's trace and grid image.

Next to what :class:`~inversion_bench.tracking.Tracker` logs, each run gets (:func:`log_extras`) the
record JSON as an artifact, each plugin's version and distribution (``plugin.defense:NAME`` tags), the
target's training curve (``target_curve.*`` metrics, one step per epoch), the numbers of its training
report and ``Defense.report()`` (``target.*``) and the pair's duration (``time.pair_s``).

Tracking never loses a computed record: the records are the truth and the mirror only copies them.
A failed mirror is a warning, never a failed pair, and never changes the run's exit code or its
leaderboard; after the first failure the store counts as broken for the rest of the run (no wait on
a dead server per record), and a run warns once however often the store fails (the tracker's
``warned``). At the end of every run whatever is missing is mirrored (:func:`mirror_missing`), so a
later run catches up.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from inversion_bench.registry import REGISTRIES
from inversion_bench.results import load_records
from inversion_bench.run_context import RunContext
from inversion_bench.tracking import mlflow_key, record_id, short_error

log = logging.getLogger(__name__)

_LATER = "the records are kept in {records}; the next `bench run` mirrors the missing ones"


def _broken(ctx: RunContext, tracker: Any, exc: BaseException, what: str) -> None:
    """Marks the tracker broken for the rest of this run and says so once per run."""
    if getattr(tracker, "broken", None) is None and not getattr(tracker, "warned", False):
        log.warning("MLflow store %s: %s failed (%s); no more mirroring in this run; %s",
                    getattr(tracker, "uri", "?"), what, short_error(exc), _LATER.format(records=ctx.records_dir))
    try:
        tracker.broken = short_error(exc)
        tracker.warned = True
    except AttributeError:  # a tracker object that takes no attributes: keep trying per record
        pass


def mirror(ctx: RunContext, tracker: Any, record: dict[str, Any], trace: dict | None) -> None:
    """Logs ``record`` (and its reconstruction grid when stored) to ``tracker``; never raises."""
    if getattr(tracker, "broken", None) is not None:
        return
    artifacts = []
    grid = ctx.store.path("attacks", record.get("keys", {}).get("attack", "")) / "grid.png"
    if grid.exists():
        artifacts.append(grid)
    try:
        run_id = tracker.mirror(record, artifacts, trace)
        client = getattr(tracker, "client", None)
        if client is not None and isinstance(run_id, str):
            log_extras(ctx, client, run_id, record)
    except Exception as exc:  # tracking must never lose a computed record
        _broken(ctx, tracker, exc, f"mirroring the record of {record.get('defense')} x {record.get('attack')} "
                f"seed {record.get('seed')}")


def mirror_missing(ctx: RunContext, tracker: Any) -> None:
    """Mirrors records that have no MLflow run yet (after a kill between record and mirror, or a store
    that failed earlier); a store that still fails is a warning, never raises."""
    if getattr(tracker, "broken", None) is not None:
        try:
            tracker.broken = None  # one more try: the failure may have passed
        except AttributeError:
            pass
    try:
        have = tracker.mirrored()
    except Exception as exc:
        _broken(ctx, tracker, exc, "listing the mirrored records")
        return
    try:
        records = load_records(ctx.records_dir)
    except Exception as exc:  # an unreadable record is reported where records are read for the report
        log.warning("MLflow mirror: could not read the records in %s (%s)", ctx.records_dir, short_error(exc))
        return
    for rec in records:
        if record_id(rec) not in have:
            mirror(ctx, tracker, rec, _trace(ctx, rec))


def _trace(ctx: RunContext, rec: dict[str, Any]) -> dict | None:
    """The attack's trace of a record when its reconstruction is stored and readable, else None."""
    akey = rec.get("keys", {}).get("attack")
    if not akey or not ctx.store.has("attacks", akey):
        return None
    try:
        return ctx.store.load_torch("attacks", akey).get("trace")
    except Exception as exc:  # the record is mirrored without its trace
        log.warning("MLflow mirror: the trace of attack product %s cannot be read (%s)", akey, short_error(exc))
        return None


def _plugin_tags(record: dict[str, Any]) -> dict[str, str]:
    """``plugin.<kind>:<name>`` -> ``"<version> (<distribution> <version>)"`` for the record's plugins (the
    distribution from the registry of this process when the record predates it)."""
    kinds = {"defense": "defenses", "attack": "attacks", "metric": "metrics"}
    out = {}
    for key, value in (record.get("plugin_versions") or {}).items():
        text = str(value)
        kind, _, name = key.partition(":")
        if "(" not in text and kind in kinds and name in REGISTRIES[kinds[kind]]:
            text = f"{text} ({REGISTRIES[kinds[kind]].provenance(name)})"
        out[mlflow_key(f"plugin.{key}")] = text[:5000]
    return out


def _target_history(ctx: RunContext, record: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-epoch training history of the record's target: from memory, else from the store (best effort)."""
    defense, seed = record.get("defense"), record.get("seed")
    held = ctx.held.targets.get((defense, seed)) if defense is not None else None
    if held is not None:
        return list(held[1].get("history") or [])
    key = (record.get("keys") or {}).get("target")
    path = ctx.store.path("targets", key) / "data.pt" if key else None
    if path is None or not path.exists():
        return []
    try:
        return list(torch.load(path, map_location="cpu", weights_only=True)["report"].get("history") or [])
    except Exception as exc:  # the curve is left out; the record is mirrored all the same
        log.debug("MLflow mirror: no training history from %s (%s)", path, short_error(exc))
        return []


def log_extras(ctx: RunContext, client: Any, run_id: str, record: dict[str, Any]) -> None:
    """Logs what the tracker does not to the MLflow run ``run_id`` of ``record`` (see the module doc)."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    metrics = [Metric(mlflow_key(f"target.{k}"), float(v), now, 0) for k, v in (record.get("target") or {}).items()
               if isinstance(v, int | float) and not isinstance(v, bool)]
    timings = record.get("timings") or {}
    if timings:
        metrics.append(Metric("time.pair_s", float(sum(float(v) for v in timings.values())), now, 0))
    for step, row in enumerate(_target_history(ctx, record)):
        metrics += [Metric(mlflow_key(f"target_curve.{k}"), float(v), now, int(row.get("epoch", step + 1)))
                    for k, v in row.items() if k != "epoch" and isinstance(v, int | float)]
    tags = [RunTag(k, v) for k, v in _plugin_tags(record).items()]
    for i in range(0, max(len(metrics), 1), 900):
        client.log_batch(run_id, metrics=metrics[i : i + 900], tags=tags if i == 0 else [])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "record.json"
        path.write_text(json.dumps(record, indent=1, sort_keys=True, default=str))
        client.log_artifact(run_id, str(path))
