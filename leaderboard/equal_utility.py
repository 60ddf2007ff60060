"""Equal-utility comparison: a swept defense's attack accuracy at the baseline's test accuracy.

A defense that costs utility looks private for that reason alone; reviewers of the label smoothing
paper (Struppek et al., ICLR 2024) asked for comparisons at equal test accuracy. A sweep
(:mod:`inversion_bench.sweep`) gives each swept defense a curve of points (test accuracy, attack
accuracy), one per value of the swept parameter. For every attack, the curve is read at the
baseline's mean test accuracy ``u0``:

* the points are taken in the order of their test accuracy, whatever order the suite lists the swept
  values in: the curve is read between the neighbours in utility whose test accuracies enclose ``u0``
  (linear interpolation of the attack accuracy); a point exactly at ``u0`` gives its own value;
* tied test accuracies give several readings (every point at ``u0``, or every pair of a point at the
  lower and one at the upper neighbouring test accuracy): the lowest attack accuracy is reported, the
  most private setting available at the baseline's utility, independent of the order of the ties; the
  number of readings is kept as ``crossings``. An attack accuracy that is not monotone in the test
  accuracy is interpolated as it is;
* the baseline itself is left out of its group's curve when it is a member (e.g. ``alpha: 0`` of an
  alpha sweep): the reading answers whether the *other* settings reach a lower attack accuracy at
  the baseline's utility, read on the segment that spans the baseline's place in the sweep;
* when ``u0`` lies outside the curve's range of test accuracies, nothing is reported (never
  extrapolated), and the reason says which side.

Values are means over seeds; the interpolation carries no interval of its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from inversion_bench.leaderboard.escape import md_text
from inversion_bench.leaderboard.model import TEST_ACCURACY, WORST_CASE


@dataclass(frozen=True)
class Reading:
    """The curve read at one utility: the value (NaN when none), the crossings used, and why not."""

    value: float
    crossings: int
    reason: str = ""


def read_at(points: Sequence[tuple[float, float]], u0: float) -> Reading:
    """The attack accuracy of a curve at test accuracy ``u0``.

    Args:
        points: (test accuracy, attack accuracy), in any order: they are sorted by test accuracy (stable).
        u0: the utility to read at (the baseline's test accuracy).
    """
    pts = [(float(x), float(y)) for x, y in points if not (math.isnan(x) or math.isnan(y))]
    if not pts:
        return Reading(math.nan, 0, "no point with both accuracies")
    xs = [x for x, _ in pts]
    if u0 < min(xs) or u0 > max(xs):
        side = "below" if u0 < min(xs) else "above"
        return Reading(math.nan, 0, f"the baseline's test accuracy {100 * u0:.1f} % is {side} the swept "
                       f"range {100 * min(xs):.1f}-{100 * max(xs):.1f} %")
    at = [y for x, y in pts if x == u0]
    if at:
        return Reading(min(at), len(at))
    x_lo, x_hi = max(x for x in xs if x < u0), min(x for x in xs if x > u0)
    lows, highs = [y for x, y in pts if x == x_lo], [y for x, y in pts if x == x_hi]
    found = [y0 + (y1 - y0) * (u0 - x_lo) / (x_hi - x_lo) for y0 in lows for y1 in highs]
    return Reading(min(found), len(found))


def sweep_groups(records: Sequence[dict[str, Any]]) -> dict[str, list[tuple[str, Any]]]:
    """Sweep group -> [(defense id, swept value)] in the order of the values in the suite."""
    groups: dict[str, dict[str, tuple[int, Any]]] = {}
    for r in records:
        sw = r.get("defense_swept")
        if isinstance(sw, dict) and sw.get("group"):
            groups.setdefault(str(sw["group"]), {})[r["defense"]] = (int(r.get("defense_index") or 0), sw.get("value"))
    return {g: [(d, v) for d, (_, v) in sorted(m.items(), key=lambda kv: kv[1][0])] for g, m in groups.items()}


def equal_utility(board: Any, records: Sequence[dict[str, Any]], metric: str | None = None) -> pd.DataFrame:
    """One row per (sweep group, attack): the group's ``metric`` (default: the table's worst-case metric) read at
    the baseline's test accuracy.

    Columns: group, param, attack, attack_label, baseline, baseline_test_accuracy, value, crossings,
    reason, and ``baseline_value`` (the baseline's own ``metric`` on that attack, for the Δ).
    Empty without sweep groups or a baseline with a test accuracy.
    """
    cols = ["group", "param", "attack", "attack_label", "baseline", "baseline_test_accuracy", "value",
            "baseline_value", "crossings", "reason"]
    groups = sweep_groups(records)
    if metric is None:
        worst = board.worst_case_column
        if worst is None:
            return pd.DataFrame(columns=cols)
        metric = worst.metric
    data = board.data
    target = data[data["metric"] == TEST_ACCURACY].set_index("defense")["mean"]
    if not groups or board.baseline is None or board.baseline not in target.index or math.isnan(target[board.baseline]):
        return pd.DataFrame(columns=cols)
    u0 = float(target[board.baseline])
    params = {str(r["defense_swept"]["group"]): str(r["defense_swept"].get("param"))
              for r in records if isinstance(r.get("defense_swept"), dict)}
    cells = data[(data["metric"] == metric) & (data["column"] != WORST_CASE)]
    rows = []
    for group, members in groups.items():
        for attack, acells in cells.groupby("attack", sort=False):
            means = acells.set_index("defense")["mean"]
            pts = [(float(target.get(d, math.nan)), float(means.get(d, math.nan)))
                   for d, _ in members if d != board.baseline]
            reading = read_at(pts, u0)
            base = means.get(board.baseline, math.nan)
            rows.append({"group": group, "param": params.get(group, ""), "attack": attack,
                         "attack_label": str(acells["attack_label"].iloc[0]), "baseline": board.baseline,
                         "baseline_test_accuracy": u0, "value": reading.value, "baseline_value": float(base),
                         "crossings": reading.crossings, "reason": reading.reason})
    return pd.DataFrame(rows, columns=cols)


def to_markdown(table: pd.DataFrame, labels: dict[str, str] | None = None) -> str:
    """The equal-utility table as Markdown (empty string without rows); free text through
    :func:`~inversion_bench.leaderboard.escape.md_text` (no raw HTML, a ``|`` never splits a cell)."""
    if table.empty:
        return ""
    labels = labels or {}
    u0 = float(table["baseline_test_accuracy"].iloc[0])
    out = [f"### Equal utility: attack Acc@1 at the baseline's test accuracy ({100 * u0:.1f} %)", "",
           "| Sweep | Attack | Acc@1 at equal utility | Baseline Acc@1 | Δ | Crossings |",
           "|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        name = md_text(f"{r['group']} ({r['param']})" if r["param"] else r["group"])
        attack = md_text(r["attack_label"])
        if math.isnan(r["value"]):
            out.append(f"| {name} | {attack} | n/a: {md_text(r['reason'])} | {100 * r['baseline_value']:.1f} | | 0 |")
            continue
        delta = 100 * (r["value"] - r["baseline_value"])
        out.append(f"| {name} | {attack} | {100 * r['value']:.1f} | {100 * r['baseline_value']:.1f} "
                   f"| {delta:+.1f} | {int(r['crossings'])} |")
    out += ["", "Linear interpolation between the sweep's points sorted by test accuracy, at the "
            "baseline's mean test accuracy; with several readings (tied test accuracies) the lowest value; never "
            "extrapolated. "
            "Means over seeds, no interval."]
    return "\n".join(out) + "\n"
