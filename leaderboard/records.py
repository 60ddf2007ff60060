"""Reading result records for the leaderboard: field look-ups, validation and deduplication.

Records are dicts as written by :func:`inversion_bench.results.write_record`, of any schema version;
:func:`current` brings one to the current version through the upgrader and validates it against
:class:`~inversion_bench.record_model.Record`. Nothing here aggregates over them (see
:mod:`inversion_bench.leaderboard.aggregate`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from inversion_bench.record_model import IdentityValues, MetricInfo, load_record


def finite(value: Any) -> float | None:
    """``value`` as a float if it is a finite number, else ``None``."""
    if value is None or isinstance(value, bool | str):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond any float (10**400)
        return None
    return out if math.isfinite(out) else None


def first_line(text: Any) -> str:
    """The first non-blank line of ``text``, stripped (``""`` for none)."""
    if not text:
        return ""
    for line in str(text).strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def where(rec: dict[str, Any]) -> str:
    """Where a record comes from (its file or run folder), for messages."""
    return str(rec.get("_path") or rec.get("run_dir") or "<record without path>")


def is_ok(rec: dict[str, Any]) -> bool:
    """Whether the record's status is ``ok``."""
    return rec.get("status") == "ok"


def distinct(records: Iterable[dict[str, Any]], key: str) -> list[Any]:
    """The distinct non-``None`` values of ``key`` over ``records``, in order of first appearance."""
    seen: list[Any] = []
    for r in records:
        v = r.get(key)
        if v is not None and v not in seen:
            seen.append(v)
    return seen


def validate(rec: dict[str, Any]) -> None:
    """Raises ``ValueError`` if a record lacks its defense/attack/seed or has non-mapping metrics/directions."""
    missing = [k for k in ("defense", "attack", "seed") if rec.get(k) is None]
    if missing:
        raise ValueError(f"record {where(rec)} lacks {', '.join(missing)}")
    for key in ("metrics", "directions"):
        if rec.get(key) is not None and not isinstance(rec[key], dict):
            raise ValueError(f"record {where(rec)}: {key!r} must be a mapping")


def first_difference(a: Any, b: Any, path: str = "") -> tuple[str, Any, Any] | None:
    """The first dotted path where two JSON-like values differ, with both values, or ``None``."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            sub = f"{path}.{k}" if path else str(k)
            if k not in a or k not in b:
                return sub, a.get(k, "<absent>"), b.get(k, "<absent>")
            diff = first_difference(a[k], b[k], sub)
            if diff is not None:
                return diff
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            diff = first_difference(x, y, f"{path}[{i}]")
            if diff is not None:
                return diff
        return None
    return None if a == b else (path, a, b)


RESULT_SETTINGS = ("defense_plugin", "defense_params", "attack_plugin", "attack_params", "keys",
                   "plugin_versions", "config_hash")
"""Record fields compared to name what differs between two records of the same pair."""


def same_result(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two records of the same (defense, attack, seed) are the same result: the same
    ``config_hash`` (content hash of every product and setting behind the numbers), or, for records
    without one, the same ``suite_hash``. The suite (name, baseline, other pairs) does not matter."""
    if a.get("config_hash") is not None or b.get("config_hash") is not None:
        return a.get("config_hash") == b.get("config_hash")
    return a.get("suite_hash") == b.get("suite_hash")


def different_results_error(key: tuple[str, str, int], old: dict[str, Any], rec: dict[str, Any]) -> ValueError:
    """The error of two genuinely different results for one pair: both files and the first differing setting."""
    settings = [k for k in RESULT_SETTINGS if k != "config_hash"]  # name a setting before the hash of them all
    diff = (first_difference({k: old.get(k) for k in settings}, {k: rec.get(k) for k in settings})
            or first_difference({"config_hash": old.get("config_hash")}, {"config_hash": rec.get("config_hash")}))
    what = (f"{diff[0]} differs ({diff[1]!r} vs {diff[2]!r})" if diff is not None
            else f"suite_hash differs ({old.get('suite_hash')!r} vs {rec.get('suite_hash')!r})")
    return ValueError(
        f"records for defense={key[0]!r}, attack={key[1]!r}, seed={key[2]} are different results: "
        f"{where(old)} and {where(rec)}: {what}. Report them separately, or re-run one with the other's settings."
    )


def dedupe(records: Sequence[dict[str, Any]], notes: list[str]) -> list[dict[str, Any]]:
    """One record per (defense, attack, seed); raises on genuinely different results for one pair.

    Records of one pair with the same ``config_hash`` (:func:`same_result`; e.g. the same pair in two run
    folders of different suites) are one result: an ``ok`` record wins over a failed one, then the newest.
    Two records with different ``config_hash`` raise ``ValueError`` naming both files and the first
    differing setting.
    """
    by_key: dict[tuple[str, str, int], dict[str, Any]] = {}
    superseded = 0
    for rec in records:
        validate(rec)
        key = (str(rec["defense"]), str(rec["attack"]), int(rec["seed"]))
        old = by_key.get(key)
        if old is None:
            by_key[key] = rec
            continue
        if not same_result(old, rec):
            raise different_results_error(key, old, rec)
        superseded += 1
        rank_old = (is_ok(old), str(old.get("created") or ""))
        rank_new = (is_ok(rec), str(rec.get("created") or ""))
        if rank_new > rank_old:
            by_key[key] = rec
    if superseded:
        notes.append(
            f"{superseded} duplicate record(s) for the same (defense, attack, seed) were superseded "
            "(an ok record wins over a failed one, then the newest)."
        )
    out = list(by_key.values())
    out.sort(
        key=lambda r: (
            int(r.get("defense_index") or 0),
            str(r["defense"]),
            int(r.get("attack_index") or 0),
            str(r["attack"]),
            int(r["seed"]),
        )
    )
    return out


def privacy_guarantee(records: Iterable[dict[str, Any]]) -> tuple[float | None, float | None]:
    """The weakest (epsilon, delta) guarantee reported by the targets of ``records``.

    Each record's ``target`` block holds what the defense's ``report()`` returned; DP defenses put
    ``epsilon`` and ``delta`` there. The leaderboard shows the largest epsilon (and largest delta)
    over seeds, so a row never claims more privacy than its weakest model has.

    Returns:
        ``(epsilon, delta)``, or ``(None, None)`` when no record reports an epsilon.
    """
    eps: list[float] = []
    deltas: list[float] = []
    for r in records:
        target = r.get("target") or {}
        e = target.get("epsilon")
        if e is None:
            continue
        try:
            eps.append(float(e))
        except (TypeError, ValueError):
            continue
        if target.get("delta") is not None:
            deltas.append(float(target["delta"]))
    if not eps:
        return None, None
    return max(eps), (max(deltas) if deltas else None)


def current(rec: dict[str, Any]) -> dict[str, Any]:
    """``rec`` at the current schema version (:func:`~inversion_bench.record_model.upgrade`), its metric
    declarations and per-identity values validated (:class:`~inversion_bench.record_model.Record`).

    Raises:
        ValueError: it lacks defense/attack/seed, names an unknown schema version, or a typed field is
            malformed (the record and the first problem).
    """
    validate(rec)
    try:
        model = load_record(rec)
    except ValueError as exc:
        raise ValueError(f"record {where(rec)}: {first_line(exc)}") from None
    out = {k: v for k, v in rec.items() if k != "schema"}
    out.update(schema_version=model.schema_version, worst_case_metric=model.worst_case_metric,
               metric_info={m: i.model_dump() for m, i in model.metric_info.items()},
               per_identity={m: v.model_dump() for m, v in model.per_identity.items()})
    return out


def metric_infos(records: Iterable[dict[str, Any]], notes: list[str]) -> dict[str, MetricInfo]:
    """Every metric's declaration over ``records`` (current version), in order of first appearance; when
    records disagree on a metric's unit or direction the first is used and the disagreement noted."""
    out: dict[str, MetricInfo] = {}
    noted: set[str] = set()
    for r in records:
        for name, block in (r.get("metric_info") or {}).items():
            info = MetricInfo.model_validate(block)
            seen = out.setdefault(name, info)
            if (seen.unit, seen.better) != (info.unit, info.better) and name not in noted:
                noted.add(name)
                notes.append(f"records disagree on the declaration of {name!r} (unit {seen.unit!r}, "
                             f"{seen.better!r} vs unit {info.unit!r}, {info.better!r}); using the first.")
    return out


def identity_values(rec: dict[str, Any], metric: str) -> IdentityValues | None:
    """The per-identity values of ``metric`` in one record (current version), or ``None``."""
    block = (rec.get("per_identity") or {}).get(metric)
    return IdentityValues.model_validate(block) if block is not None else None
