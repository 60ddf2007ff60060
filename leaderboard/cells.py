"""The text of every table cell: a mean with its spread or interval, its notes (failed, n/a, no CI), its
difference to the baseline and its test, and the worst-case cell with the strongest attack.

:mod:`~inversion_bench.leaderboard.render` (Markdown, CSV), :mod:`~inversion_bench.leaderboard.latex` and
:mod:`~inversion_bench.leaderboard.html` format the cells of a
:class:`~inversion_bench.leaderboard.model.LeaderboardTable` with these helpers.
"""

from __future__ import annotations

import pandas as pd

from inversion_bench.leaderboard.labels import NA_MARK, NO_INTERVAL, NOT_RUN, attack_labels
from inversion_bench.leaderboard.model import Column, LeaderboardTable, WorstCase
from inversion_bench.leaderboard.number_format import format_value, is_missing, p_value_text


def cell_rows(lb: LeaderboardTable) -> dict[tuple[str, str], pd.Series]:
    """Every row of :attr:`LeaderboardTable.data` keyed by (defense id, column key), for rendering."""
    return {(r.defense, r.column): r for _, r in lb.data.iterrows()}


def has_interval(cell: pd.Series) -> bool:
    """Whether the cell has a bootstrap interval (both ends finite)."""
    low, high = cell.get("ci_low"), cell.get("ci_high")
    return not (is_missing(low) or is_missing(high))


def spread_text(col: Column, cell: pd.Series, decimals: int, pm: str = "±", intervals: bool = False) -> str:
    """``" ± 2.1"`` after a mean: the std over seeds, or with ``intervals`` the half-width of the
    bootstrap interval; ``""`` when there is none."""
    if intervals:
        if not has_interval(cell):
            return ""
        return f" {pm} {format_value(col, (float(cell['ci_high']) - float(cell['ci_low'])) / 2, decimals)}"
    if cell["n"] > 1 and not is_missing(cell["std"]):
        return f" {pm} {format_value(col, float(cell['std']), decimals)}"
    return ""


def interval_text(col: Column, cell: pd.Series, decimals: int, confidence: float) -> str:
    """``"95% CI [34.0, 39.8] (crossed bootstrap over seeds and identities, ...)"``, or why
    there is none (``"no interval: one seed"``)."""
    method = str(cell.get("ci_method") or "")
    if not has_interval(cell):
        return method or "no interval"
    low = format_value(col, float(cell["ci_low"]), decimals)
    high = format_value(col, float(cell["ci_high"]), decimals)
    return f"{100 * confidence:g}% CI [{low}, {high}]" + (f" ({method})" if method else "")


def test_text(cell: pd.Series) -> str:
    """The defense test of a cell: ``"p = 0.012 (adjusted 0.030), two-sample permutation test over seeds
    (exact; 5 vs 5 seeds)"``, or why there is none; ``""`` for the baseline and without a baseline."""
    test = str(cell.get("test") or "")
    if test == "baseline":
        return ""
    p = p_value_text(cell.get("p_value"))
    if p and bool(cell.get("testable", False)):
        adjusted = p_value_text(cell.get("p_adjusted"))
        p += f" (adjusted {adjusted.removeprefix('p ').removeprefix('= ')})" if adjusted else ""
    return f"{p}, {test}" if p else test


def is_significant(cell: pd.Series) -> bool:
    """Whether the cell's defense test against the baseline is significant (adjusted p below the level)."""
    return bool(cell.get("significant", False))


def _annotation_parts(cell: pd.Series, na_mark: str, intervals: bool = False) -> list[str]:
    parts = [NO_INTERVAL] if intervals and cell["n"] and not has_interval(cell) else []
    total = int(cell["n_records"])
    if cell["n_failed"]:
        parts.append(f"{cell['n_failed']}/{total} failed")
    if cell["n_missing"]:
        parts.append(f"{cell['n_missing']}/{total} n/a{na_mark}")
    return parts


def _annotation(cell: pd.Series, na_mark: str, intervals: bool = False) -> str:
    parts = _annotation_parts(cell, na_mark, intervals)
    return f" ({', '.join(parts)})" if parts else ""


def cell_text(col: Column, cell: pd.Series, decimals: int, pm: str = "±", na_mark: str = NA_MARK,
              intervals: bool = False) -> str:
    """Display text of a main-table cell.

    ``"36.9 ± 2.1"``; one seed: ``"36.9"``; every seed failed: ``"failed"``; some failed:
    ``"36.9 (1/3 failed)"``; value missing in an ok record: ``"n/a†"``; no record: ``"—"``. With
    ``intervals`` the ``±`` is the half-width of the bootstrap interval, and a cell without one says
    ``"36.9 (no CI)"``.

    Args:
        col: the column.
        cell: the row of :attr:`LeaderboardTable.data`.
        decimals: decimals of the column.
        pm: the plus-minus sign.
        na_mark: footnote mark for missing values.
        intervals: show the interval's half-width instead of the std.

    Returns:
        The text.
    """
    if cell["n"] == 0:
        if cell["n_failed"]:
            return "failed"
        if cell["n_missing"]:
            return f"n/a{na_mark}"
        return NOT_RUN
    text = format_value(col, float(cell["mean"]), decimals) + spread_text(col, cell, decimals, pm, intervals)
    return text + _annotation(cell, na_mark, intervals)


def delta_text(col: Column, cell: pd.Series, base: pd.Series, decimals: int, na_mark: str = NA_MARK,
               mark: str = "") -> str:
    """Display text of a Δ-table cell (difference of means to the baseline).

    Args:
        col: the column.
        cell: the defense's row of :attr:`LeaderboardTable.data`.
        base: the baseline's row for the same column.
        decimals: decimals of the column.
        na_mark: footnote mark for missing values.
        mark: appended to the number when the defense test is significant (``"*"`` in Markdown).

    Returns:
        The text (``"failed"``/``"n/a"``/``"—"`` where no difference can be taken).
    """
    if cell["n"] == 0:
        return cell_text(col, cell, decimals, na_mark=na_mark)
    if base["n"] == 0 or is_missing(cell["delta"]):
        return NOT_RUN
    star = mark if mark and is_significant(cell) else ""
    return format_value(col, float(cell["delta"]), decimals, signed=True) + star + _annotation(cell, na_mark)


def worst_case_parts(lb: LeaderboardTable, wc: WorstCase) -> list[str]:
    """The notes of a worst-case cell: the strongest attack (``"GMI"``), then, when it covers only some
    attacks of the table, how many (``"2/3 attacks on every seed"``)."""
    if wc.attack is None:
        return ["no attack on every seed"] if wc.covered and any(k for _, k in wc.covered) else []
    parts = [attack_labels(lb).get(wc.attack, wc.attack)]
    if wc.partial:
        parts.append(f"{len(wc.complete)}/{wc.n_attacks} attacks on every seed")
    return parts


def display_text(lb: LeaderboardTable, defense: str, col: Column, cell: pd.Series, decimals: int,
                 pm: str = "±", na_mark: str = NA_MARK) -> str:
    """Display text of a main-table cell of any column (see :func:`cell_text`; ``±`` is the interval's
    half-width when ``lb.settings.intervals``).

    A worst-case cell also names the attack and the seeds that cover only some attacks:
    ``"41.2 ± 3.0 (GMI; 2/3 attacks on seed 1; 1/3 failed)"`` (``failed``: seeds where every attack
    failed).
    """
    wc = lb.worst_case.get(defense) if col.is_worst_case else None
    intervals = lb.settings.intervals
    if wc is None or cell["n"] == 0:
        return cell_text(col, cell, decimals, pm=pm, na_mark=na_mark, intervals=intervals)
    text = format_value(col, float(cell["mean"]), decimals) + spread_text(col, cell, decimals, pm, intervals)
    parts = [*worst_case_parts(lb, wc), *_annotation_parts(cell, na_mark, intervals)]
    return f"{text} ({'; '.join(parts)})" if parts else text


def worst_case_title(lb: LeaderboardTable, defense: str, col: Column, decimals: int) -> str:
    """The worst case's tooltip: the strongest attack, the mean of per-seed maxima and every seed's maximum:
    ``"strongest attack's mean: GMI; mean of per-seed maxima 45.0 (seed 0: 44.0 by GMI; seed 1: 46.0 by
    PPA (2/3 attacks))"``."""
    wc = lb.worst_case.get(defense)
    if wc is None:
        return "no record"
    labels = attack_labels(lb)
    covered = dict(wc.covered)
    parts = []
    for seed, value, attack in zip(wc.seeds, wc.maxima, wc.attacks, strict=True):
        text = f"seed {seed}: {format_value(col, value, decimals)} by {labels.get(attack, attack)}"
        if covered[seed] < wc.n_attacks:
            text += f" ({covered[seed]}/{wc.n_attacks} attacks)"
        parts.append(text)
    parts += [f"seed {s}: every attack failed" for s in wc.failed]
    parts += [f"seed {s}: not computed" for s in wc.missing]
    if wc.attack is None:
        return "; ".join(parts) + ("; " if parts else "") + "no attack has a value on every seed"
    head = f"strongest attack's mean: {labels.get(wc.attack, wc.attack)}"
    if wc.partial:
        head += f" (over the {len(wc.complete)}/{wc.n_attacks} attacks with a value on every seed)"
    return (f"{head}; mean of per-seed maxima {format_value(col, wc.mean_of_maxima, decimals)} "
            f"({'; '.join(parts)})")


def seed_attacks(wc: WorstCase | None) -> str:
    """``"0:gmi;1:ppa"``: the attack of every seed's maximum (CSV)."""
    return "" if wc is None else ";".join(f"{s}:{a}" for s, a in zip(wc.seeds, wc.attacks, strict=True))


def seed_coverage(wc: WorstCase | None) -> str:
    """``"0:3/3;1:2/3"``: the attacks every seed's maximum covers (CSV)."""
    return "" if wc is None else ";".join(f"{s}:{k}/{wc.n_attacks}" for s, k in wc.covered)
