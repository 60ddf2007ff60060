"""The MLflow mirror of a record: one MLflow run per record, with the attack's trace and grid image.

Tracking never loses a computed record: a failed mirror is a warning, and the next run mirrors
whatever is missing (:func:`mirror_missing`).
"""

from __future__ import annotations

import logging
from typing import Any

from inversion_bench.results import load_records
from inversion_bench.run_context import RunContext
from inversion_bench.tracking import record_id

log = logging.getLogger(__name__)


def mirror(ctx: RunContext, tracker: Any, record: dict[str, Any], trace: dict | None) -> None:
    """Logs ``record`` (and its reconstruction grid when stored) to ``tracker``."""
    artifacts = []
    grid = ctx.store.path("attacks", record.get("keys", {}).get("attack", "")) / "grid.png"
    if grid.exists():
        artifacts.append(grid)
    try:
        tracker.mirror(record, artifacts, trace)
    except Exception as exc:  # tracking must never lose a computed record
        log.warning("MLflow mirror of %s failed: %s", record.get("defense"), exc)


def mirror_missing(ctx: RunContext, tracker: Any) -> None:
    """Mirrors records that have no MLflow run yet (e.g. after a kill between record and mirror)."""
    have = tracker.mirrored()
    for rec in load_records(ctx.records_dir):
        if record_id(rec) not in have:
            trace = None
            akey = rec.get("keys", {}).get("attack")
            if akey and ctx.store.has("attacks", akey):
                trace = ctx.store.load_torch("attacks", akey).get("trace")
            mirror(ctx, tracker, rec, trace)
