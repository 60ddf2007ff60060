"""Defense sweeps: one suite entry that becomes a defense per value of one parameter.

``defenses: [{id: ls, name: label_smoothing, sweep: {alpha: [-0.1, 0, 0.1]}}]`` is read as three
entries ``ls.alpha-0.1``, ``ls.alpha0`` and ``ls.alpha0.1`` whose ``params.alpha`` is the value and
whose ``swept`` block (``{group: ls, param: alpha, value: -0.1}``) keeps them together: the report
joins a group's points on the privacy-utility figure and interpolates its attack accuracy at the
baseline's test accuracy (:mod:`inversion_bench.leaderboard.equal_utility`). Each expanded entry is
an ordinary defense (own target, own store key: the same parameters give the same key as a
hand-written entry, so nothing is retrained).
"""

from __future__ import annotations

import copy
from typing import Any

from inversion_bench.config_messages import shorten
from inversion_bench.errors import ConfigError
from inversion_bench.suite_schema import ID_RULE, check_id, slug


def _value_text(value: Any) -> str:
    """``-0.05`` -> ``-0.05``, ``0.0`` -> ``0``, ``True`` -> ``true``: the value as it reads in an id."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _check(entry: dict[str, Any], where: str, source: str) -> tuple[str, list[Any]]:
    sweep = entry["sweep"]
    if not isinstance(sweep, dict) or len(sweep) != 1:
        raise ConfigError(f"{source}: {where}.sweep: must name exactly one parameter and its values, "
                          f"e.g. sweep: {{alpha: [-0.05, 0.0, 0.1]}}; got {shorten(sweep)}")
    (param, values), = sweep.items()
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{source}: {where}.sweep.{shorten(param, quote=False)}: must be a non-empty list of "
                          f"values, got {shorten(values)}")
    if len({_value_text(v) for v in values}) != len(values):
        raise ConfigError(f"{source}: {where}.sweep.{shorten(param, quote=False)}: values must be distinct, "
                          f"got {shorten(values)}")
    if "swept" in entry:
        raise ConfigError(f"{source}: {where}: give either sweep: or swept:, not both")
    params = entry.get("params") or {}
    if not isinstance(params, dict):
        return str(param), values  # the schema reports the malformed params
    if param in params:
        raise ConfigError(f"{source}: {where}.sweep.{param}: {param} is also set in params; remove it "
                          "from params (the sweep sets it)")
    return str(param), values


def _swept_id(base_id: Any, param: str, value: Any, where: str, source: str) -> str:
    """``<id>.<param><value>``, refused on the sweep entry when it breaks the id rule."""
    if not isinstance(base_id, str):
        raise ConfigError(f"{source}: {where}.id: must be a text id, got {shorten(base_id)}; use {ID_RULE}")
    try:
        check_id(base_id)
    except ValueError as exc:
        raise ConfigError(f"{source}: {where}.id: {exc}") from None
    ident = f"{base_id}.{param}{_value_text(value)}"
    try:
        check_id(ident)
    except ValueError:
        raise ConfigError(f"{source}: {where}.sweep.{shorten(param, quote=False)}: the value {shorten(value)} makes "
                          f"the id {shorten(ident)} ({len(ident)} characters), which is not a valid id: ids are "
                          f"{ID_RULE}; use a shorter id or plain values") from None
    return ident


def expand_entry(entry: dict[str, Any], where: str, source: str) -> list[dict[str, Any]]:
    """The defense entries one suite entry stands for (itself when it has no ``sweep``)."""
    if not isinstance(entry, dict) or "sweep" not in entry:
        return [entry]
    param, values = _check(entry, where, source)
    group = entry.get("id") or entry.get("label") or entry.get("name")
    if not isinstance(group, str) or not group:
        raise ConfigError(f"{source}: {where}: a swept defense needs an id, e.g. id: ls")
    base_id = entry.get("id") or slug(group)
    out = []
    for value in values:
        e = {k: copy.deepcopy(v) for k, v in entry.items() if k != "sweep"}
        e["params"] = {**(entry.get("params") or {}), param: value}
        e["id"] = _swept_id(base_id, param, value, where, source)
        e["label"] = f"{entry.get('label') or base_id} {param}={_value_text(value)}"
        e["swept"] = {"group": base_id, "param": param, "value": value}
        out.append(e)
    return out


def expand_sweeps(suite: dict[str, Any], source: str) -> dict[str, Any]:
    """``suite`` with every swept defense expanded (a new mapping; ``suite`` is not changed)."""
    defenses = suite.get("defenses")
    if not isinstance(defenses, list) or not any(isinstance(d, dict) and "sweep" in d for d in defenses):
        return suite
    expanded: list[Any] = []
    for i, d in enumerate(defenses):
        expanded += expand_entry(d, f"defenses[{i}]", source)
    return {**suite, "defenses": expanded}


def sweep_lines(suite: dict[str, Any], expanded: list[Any]) -> dict[str, str]:
    """``defenses[i].params.<param>`` of every swept entry of the expanded suite -> the ``sweep:`` line the
    user wrote (``defenses[k].sweep.<param>``), so that a problem of a swept value is reported there."""
    lines: dict[str, str] = {}
    originals = suite.get("defenses") if isinstance(suite.get("defenses"), list) else []
    for i, entry in enumerate(expanded):
        swept = getattr(entry, "swept", None)
        if swept is None:
            continue
        for k, d in enumerate(originals):
            if isinstance(d, dict) and "sweep" in d and (d.get("id") or slug(str(d.get("label") or d.get("name")))
                                                         ) == swept.group:
                lines[f"defenses[{i}].params.{swept.param}"] = f"defenses[{k}].sweep.{swept.param}"
                break
    return lines
