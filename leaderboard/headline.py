"""The top of the report page: the answer first.

* :func:`tradeoff_svg`: the privacy–utility figure, inline SVG drawn from the table alone (so the
  tables-only ``bench leaderboard`` has it too): the worst case over attacks (y, lower is more private)
  against the target's test accuracy (x, higher is more useful), one point per defense with its
  interval on each axis where the table has one, the baseline drawn as a diamond.
* :func:`headline_table`: one compact row per defense: test accuracy, the worst case (and the attack
  that reached it), and one chosen metric per attack (default: the worst case's metric), each with its Δ to the
  baseline; it fits a 1,280 px screen for a quickstart-sized suite (the full table follows below it).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from inversion_bench.leaderboard.cells import cell_rows, delta_text, is_significant
from inversion_bench.leaderboard.labels import ARROWS, NEAR_CHANCE
from inversion_bench.leaderboard.number_format import decimals_by_column, format_value
from inversion_bench.leaderboard.model import Column, LeaderboardTable
from inversion_bench.leaderboard.worst_case import ranked

"""The metric shown per attack in the headline table when the caller names none."""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class TradeoffPoint:
    """One defense in the privacy–utility figure (accuracies as fractions; intervals None when unknown)."""

    defense: str
    label: str
    x: float
    y: float
    x_interval: tuple[float, float] | None
    y_interval: tuple[float, float] | None
    baseline: bool
    attack: str | None  # the attack that reached the worst case (one attack on every seed), else None


def _interval(cell: Any) -> tuple[float, float] | None:
    return (float(cell["ci_low"]), float(cell["ci_high"])) if _finite(cell["ci_low"]) and _finite(
        cell["ci_high"]) else None


def tradeoff_points(lb: LeaderboardTable) -> list[TradeoffPoint]:
    """The defenses with both a test accuracy and a worst case, in ranking order.

    The worst case's interval is its own where the table has one; otherwise, when one attack reached the
    worst case on every seed, that attack's interval of the worst-case metric (the same numbers).
    """
    cells = cell_rows(lb)
    test = next((c for c in lb.columns if c.is_test_accuracy), None)
    worst = next((c for c in lb.columns if c.is_worst_case), None)
    if test is None or worst is None:
        return []
    labels = {c.attack: c.attack_label for c in lb.columns if c.is_attack}
    points = []
    for info in ranked(lb):
        t, w = cells.get((info.defense, test.key)), cells.get((info.defense, worst.key))
        if t is None or w is None or not t["n"] or not w["n"] or not _finite(t["mean"]) or not _finite(w["mean"]):
            continue
        wc = lb.worst_case.get(info.defense)
        attack = wc.attack if wc is not None and wc.attack else None
        y_int = _interval(w)
        if y_int is None and attack is not None and (attack, worst.metric) in {(c.attack, c.metric)
                                                                              for c in lb.columns}:
            y_int = _interval(cells[(info.defense, f"{attack}/{worst.metric}")])
        points.append(TradeoffPoint(info.defense, info.label, float(t["mean"]), float(w["mean"]), _interval(t),
                                    y_int, info.is_baseline, labels.get(attack) if attack else None))
    return points


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]: steps of 1, 2 or 5 x 10^k, about ``count`` of them."""
    if not (_finite(lo) and _finite(hi)):
        raise ValueError(f"nice_ticks needs finite bounds, got {lo}, {hi}")
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step + 1e-9) * step
    ticks = []
    k = 0
    while first + k * step <= hi + step * 1e-9 or len(ticks) < 2:
        ticks.append(round(first + k * step, 10))
        k += 1
    if ticks[-1] < hi:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _bounds(values: Sequence[float]) -> tuple[float, float]:
    """The axis range of percentages: the values padded by 8 %, within [0, 100]."""
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * 0.08, 0.5)
    return max(lo - pad, 0.0), min(hi + pad, 100.0)


def place_labels(anchors: Sequence[tuple[float, float, float]], box: tuple[float, float, float, float],
                 height: float = 14.0) -> list[tuple[float, float, str]]:
    """Label positions ``(x, y, text-anchor)`` for points ``(x, y, label width)`` in SVG units, each beside
    its point (right above, right below, left above, left below, then further down) so that labels do not
    overlap each other and stay inside ``box`` = (left, top, right, bottom) where they can."""
    placed = [(x - 8, y - 8, x + 8, y + 8) for x, y, _ in anchors]  # labels do not cover points either
    out = []
    left, top, right, bottom = box
    for x, y, w in anchors:
        options = [(x + sign * 9, y + dy, "start" if sign > 0 else "end")
                   for dy in (-7, 16, -21, 30, -35, 44) for sign in (1, -1)]
        best: tuple[int, int] | None = None  # (overlaps, option index) of the best option inside the box
        for i, (tx, ty, anchor) in enumerate(options):
            x0 = tx if anchor == "start" else tx - w
            rect = (x0 - 1, ty - height + 2, x0 + w + 1, ty + 4)
            if not (rect[0] >= left and rect[2] <= right and rect[1] >= top and rect[3] <= bottom):
                continue
            hits = sum(not (rect[2] <= r[0] or rect[0] >= r[2] or rect[3] <= r[1] or rect[1] >= r[3]) for r in placed)
            if best is None or hits < best[0]:
                best = (hits, i)
            if hits == 0:
                break
        tx, ty, anchor = options[best[1] if best is not None else 0]
        x0 = tx if anchor == "start" else tx - w
        placed.append((x0 - 1, ty - height + 2, x0 + w + 1, ty + 4))
        out.append((tx, ty, anchor))
    return out


def tradeoff_svg(lb: LeaderboardTable, width: int = 640, height: int = 380) -> str:
    """The privacy–utility figure as an inline ``<svg>`` (empty string without points)."""
    points = tradeoff_points(lb)
    if not points:
        return ""
    xs = [100 * v for p in points for v in (p.x, *(p.x_interval or ()))]
    ys = [100 * v for p in points for v in (p.y, *(p.y_interval or ()))]
    xt, yt = nice_ticks(*_bounds(xs)), nice_ticks(*_bounds(ys))
    left, right, top, bottom = 62, 24, 16, 48
    pw, ph = width - left - right, height - top - bottom

    def sx(v: float) -> float:
        return left + (100 * v - xt[0]) / (xt[-1] - xt[0]) * pw

    def sy(v: float) -> float:
        return top + (yt[-1] - 100 * v) / (yt[-1] - yt[0]) * ph

    out = [f'<svg id="tradeoff" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" aria-label="Worst-case attack accuracy against test accuracy, one point '
           'per defense" font-family="system-ui,sans-serif" font-size="12">']
    for t in xt:
        x = left + (t - xt[0]) / (xt[-1] - xt[0]) * pw
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#eee"/>'
                   f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle" fill="#555">{t:g}</text>')
    for t in yt:
        y = top + (yt[-1] - t) / (yt[-1] - yt[0]) * ph
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#eee"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#555">{t:g}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    out.append(f'<text x="{left + pw / 2:.1f}" y="{height - 8}" text-anchor="middle" fill="#222">Test accuracy (%) '
               "→ more useful</text>")
    out.append(f'<text transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" text-anchor="middle" fill="#222">'
               "Worst-case attack acc. (%) ↓ more private</text>")
    names = [p.label + (" (baseline)" if p.baseline else "") for p in points]
    spots = place_labels([(sx(p.x), sy(p.y), 6.6 * len(n)) for p, n in zip(points, names, strict=True)],
                         (left, top, left + pw, top + ph))
    for p, name, (tx, ty, anchor) in zip(points, names, spots, strict=True):
        x, y = sx(p.x), sy(p.y)
        color = "#9a6d00" if p.baseline else "#1f5fa8"
        if p.x_interval:
            out.append(f'<line class="ci-x" x1="{sx(p.x_interval[0]):.1f}" y1="{y:.1f}" x2="{sx(p.x_interval[1]):.1f}" '
                       f'y2="{y:.1f}" stroke="{color}" stroke-width="1.5"/>')
        if p.y_interval:
            out.append(f'<line class="ci-y" x1="{x:.1f}" y1="{sy(p.y_interval[0]):.1f}" x2="{x:.1f}" '
                       f'y2="{sy(p.y_interval[1]):.1f}" stroke="{color}" stroke-width="1.5"/>')
        tip = (f"{p.label}: test accuracy {100 * p.x:.1f} %, worst case {100 * p.y:.1f} %"
               + (f" ({p.attack})" if p.attack else "") + (" — baseline" if p.baseline else ""))
        shape = (f'<path d="M{x:.1f} {y - 7:.1f} L{x + 7:.1f} {y:.1f} L{x:.1f} {y + 7:.1f} L{x - 7:.1f} {y:.1f} Z"'
                 if p.baseline else f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5"')
        out.append(f'<g class="point{" baseline" if p.baseline else ""}" data-defense="{_e(p.defense)}">'
                   f'{shape} fill="{color}"><title>{_e(tip)}</title></{"path" if p.baseline else "circle"}>'
                   f'<text x="{tx:.1f}" y="{ty:.1f}" text-anchor="{anchor}" fill="{color}">{_e(name)}</text></g>')
    out.append("</svg>")
    return "".join(out)


def headline_metric(lb: LeaderboardTable, preferred: str | None = None) -> str | None:
    """``preferred`` when an attack column has it, else the worst case's metric (the suite's
    ``report.worst_case``, ``attack_acc@1`` by default), else the first attack metric."""
    metrics = [c.metric for c in lb.columns if c.is_attack and not c.placeholder]
    worst = next((c.metric for c in lb.columns if c.is_worst_case), None)
    for m in (preferred, worst):
        if m in metrics:
            return m
    return metrics[0] if metrics else None


def headline_columns(lb: LeaderboardTable, metric: str | None) -> list[Column]:
    """Test accuracy, the worst case, then ``metric`` of every attack (in the table's order)."""
    cols = [c for c in lb.columns if c.is_test_accuracy or c.is_worst_case]
    return cols + [c for c in lb.columns if c.is_attack and c.metric == metric]


def _head(col: Column) -> str:
    arrow = ARROWS.get(col.direction or "", "")
    unit = " (%)" if col.is_share else ""
    if col.is_test_accuracy:
        return f"<th>Test acc.{unit} {arrow}</th>"
    if col.is_worst_case:
        return f'<th title="the highest value over attacks, per seed">Worst case{unit} {arrow}</th>'
    access = f'<span class="acc">{_e(col.access)}</span>' if col.access else ""
    return f'<th data-access="{_e(col.access or "")}">{_e(col.attack_label)}{access}</th>'


def headline_table(lb: LeaderboardTable, metric: str | None = None) -> str:
    """The compact table: one row per defense (ranking order), the columns of :func:`headline_columns`."""
    metric = headline_metric(lb, metric)
    cols = headline_columns(lb, metric)
    if not cols:
        return ""
    cells, decimals = cell_rows(lb), decimals_by_column(lb)
    labels = {c.attack: c.attack_label for c in lb.columns if c.is_attack}
    rows = []
    for info in ranked(lb):
        name = _e(info.label) + (" <small>(baseline)</small>" if info.is_baseline else "")
        if info.near_chance:
            name += f' <span class="warn" title="test accuracy at most 2x chance level">{_e(NEAR_CHANCE)}</span>'
        tds = [f'<td class="name">{name}</td>']
        for c in cols:
            cell = cells[(info.defense, c.key)]
            text = format_value(c, float(cell["mean"]), decimals[c.key]) if cell["n"] else "—"
            sub = []
            wc = lb.worst_case.get(info.defense) if c.is_worst_case else None
            if wc is not None and wc.attack:
                sub.append(_e(labels.get(wc.attack, wc.attack)))
            if lb.baseline is not None and not info.is_baseline and cell["n"] and _finite(cell["delta"]):
                d = delta_text(c, cell, cells[(lb.baseline, c.key)], decimals[c.key])
                cls = _delta_class(c, float(cell["delta"]), is_significant(cell))
                sub.append(f'<span class="{cls}">Δ {_e(d)}</span>')
            small = f'<span class="delta">{" · ".join(sub)}</span>' if sub else ""
            tds.append(f'<td data-col="{_e(c.key)}" data-mean="{_e(cell["mean"]) if cell["n"] else ""}">'
                       f"{_e(text)}{small}</td>")
        cls = ' class="baseline"' if info.is_baseline else ""
        rows.append(f'<tr{cls} data-row="{_e(info.defense)}">' + "".join(tds) + "</tr>")
    what = f"{metric} per attack" if metric else "no attack metric"
    return (f'<div class="scroll" id="headline-scroll"><table class="lb headline" id="headline" '
            f'data-metric="{_e(metric or "")}"><thead><tr><th class="name">Defense</th>'
            + "".join(_head(c) for c in cols) + "</tr></thead><tbody>" + "".join(rows)
            + f'</tbody></table></div><p class="small">Headline: {_e(what)}; means over seeds, Δ to the baseline '
            "(green/red only when significant). Every metric, interval and tooltip: the full table below.</p>")


def _delta_class(col: Column, delta: float, significant: bool) -> str:
    if col.direction not in ("higher", "lower") or not math.isfinite(delta) or delta == 0 or not significant:
        return "ns"
    return "good" if (delta > 0) == (col.direction == "higher") else "bad"
