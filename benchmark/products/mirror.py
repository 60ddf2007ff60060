"""The MLflow mirror of a record: one MLflow run per record, with the attack's trace and grid image.

Tracking never loses a computed record: the records are the truth and the mirror only copies them.
A failed mirror is a warning, never a failed pair; after the first failure the store counts as
broken for the rest of the run (no wait on a dead server per record). At the end of every run
whatever is missing is mirrored (:func:`mirror_missing`), so a later run catches up.
"""

from __future__ import annotations

import logging
from typing import Any

from inversion_bench.results import load_records
from inversion_bench.run_context import RunContext
from inversion_bench.tracking import record_id, short_error

log = logging.getLogger(__name__)

_LATER = "the records are kept in {records}; the next `bench run` mirrors the missing ones"


def _broken(ctx: RunContext, tracker: Any, exc: BaseException, what: str) -> None:
    """Marks the tracker broken for the rest of this run and says so once."""
    if getattr(tracker, "broken", None) is None:
        log.warning("MLflow store %s: %s failed (%s); no more mirroring in this run; %s",
                    getattr(tracker, "uri", "?"), what, short_error(exc), _LATER.format(records=ctx.records_dir))
    try:
        tracker.broken = short_error(exc)
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
        tracker.mirror(record, artifacts, trace)
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
