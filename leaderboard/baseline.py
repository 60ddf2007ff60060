"""Which defense is the baseline of a table: a property of the table, not of the records.

Records carry the baseline their suite named when they were written, but changing ``baseline:`` must
never recompute anything, and run folders of different suites may name different baselines. The
baseline is therefore chosen when the table is built: ``--baseline ID`` (``bench report``/``bench
leaderboard``), else the baseline named by the first run folder's ``suite.json`` (rewritten by every
``bench run`` of that folder, so the latest suite wins), else the one named by the newest record.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from inversion_bench.leaderboard.records import distinct


def suite_baseline(suite: dict[str, Any]) -> str | None:
    """The baseline defense id of a resolved suite (``suite.json``'s ``suite``): ``baseline:`` or the
    first defense's id (the rules of ``suite_schema.entry_id``)."""
    if suite.get("baseline"):
        return str(suite["baseline"])
    defenses = suite.get("defenses") or []
    if not defenses:
        return None
    d = defenses[0]
    if d.get("id"):
        return str(d["id"])
    if d.get("label"):
        return re.sub(r"[^A-Za-z0-9]+", "-", str(d["label"])).strip("-").lower() or "x"
    return str(d.get("name"))


def choose_baseline(run_dirs: Sequence[Path], chosen: str | None) -> tuple[str | None, str | None]:
    """(baseline id, where it comes from) for a report of ``run_dirs``: ``chosen`` (``--baseline``), else the
    first run folder's ``suite.json``; ``(None, None)`` when neither names one (the records decide)."""
    if chosen:
        return chosen, "--baseline"
    from inversion_bench.leaderboard.runs import read_suite_json

    try:
        suite = read_suite_json(Path(run_dirs[0]))["suite"]
    except (ValueError, KeyError, OSError):
        return None, None
    found = suite_baseline(suite) if isinstance(suite, dict) else None
    return (found, f"suite.json of {run_dirs[0]}") if found else (None, None)


def table_baseline(recs: Sequence[dict[str, Any]], defenses: Collection[str], notes: list[str],
                   chosen: str | None = None, source: str | None = None) -> tuple[str | None, str]:
    """The table's baseline defense (``None`` when it has no records) and where it comes from.

    Args:
        recs: the deduplicated records.
        defenses: the defense ids with records.
        notes: where to note a baseline without records or records that name different ones.
        chosen: the baseline chosen for the table (``--baseline`` or a ``suite.json``), if any.
        source: where ``chosen`` comes from (for the provenance).

    Raises:
        ValueError: ``chosen`` came from ``--baseline`` and is not a defense with records.
    """
    if chosen is None:
        named = distinct(sorted(recs, key=lambda r: str(r.get("created") or ""), reverse=True), "baseline")
        if len(named) > 1:
            notes.append(f"records name different baselines ({sorted(map(str, named))}); the newest record's "
                         f"{named[0]!r} is used (choose one with --baseline).")
        chosen, source = (str(named[0]), "the records") if named else (None, "none")
    if chosen is not None and chosen not in defenses:
        variants = sorted(d for d in defenses if d.startswith(f"{chosen}@"))
        if variants:
            notes.append(f"the baseline defense {chosen!r} was run with several configurations ({', '.join(variants)});"
                         " no differences are shown: choose one with --baseline.")
            return None, source or "none"
        if source == "--baseline":
            raise ValueError(f"--baseline {chosen!r} is not a defense with records; defenses: {sorted(defenses)}")
        notes.append(f"the baseline defense {chosen!r} has no records; no differences are shown.")
        return None, source or "none"
    return chosen, source or "none"
