"""Number and cell formatting shared by the renderers of a leaderboard.

:mod:`~inversion_bench.leaderboard.render` (Markdown, CSV), :mod:`~inversion_bench.leaderboard.latex` and
:mod:`~inversion_bench.leaderboard.html` format the cells of a
:class:`~inversion_bench.leaderboard.model.LeaderboardTable` with these helpers, so that every format shows
the same numbers.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from inversion_bench.leaderboard.model import (
    DEFAULT_ACCESS,
    TARGET_COLUMN,
    WORST_CASE_ATTACK,
    Column,
    DefenseInfo,
    LeaderboardTable,
    WorstCase,
)

ARROWS = {"higher": "↑", "lower": "↓"}
NEAR_CHANCE = "⚠ near chance"
NA_MARK = "†"
NOT_RUN = "—"
SIGNIFICANT_MARK = "*"
"""Appended to a Δ whose defense test against the baseline is significant after adjustment (Markdown)."""
NO_INTERVAL = "no CI"
"""Annotation of a cell without an interval when the table shows intervals (a single value)."""
ACCESS_HELP = {
    "white-box": "white-box: the model, its gradients and parameters",
    "black-box": "black-box: output probabilities only, no gradients",
    "label-only": "label-only: the top-1 label only",
}
"""What each access level lets an attack see (header tooltips and legends)."""
WORST_CASE_HELP = (
    "Worst case: the strongest attack's mean, i.e. the highest mean attack accuracy (attack_acc@1, over "
    "seeds) of the attacks with an ok record on every seed of the row, ± its std over seeds; the attack named "
    "is that attack. A defense is only as strong as the strongest attack against it. The mean of per-seed "
    "maxima (CSV worst_case_mean_of_maxima, tooltip) is larger by construction: for two equally strong "
    "attacks by about 0.56 seed standard deviations whatever the number of seeds."
)


# --------------------------------------------------------------------------------------------------
# numbers


def _isnan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def column_decimals(lb: LeaderboardTable, col: Column) -> int:
    """Decimals used for every number of a column (means, stds and differences alike).

    Accuracies are shown in percent with one decimal. Other metrics get about three significant
    digits from the largest absolute mean of the column: ``0.412``, ``1.234``, ``12.3``, ``123.4``.

    Args:
        lb: the leaderboard.
        col: the column.

    Returns:
        Number of decimals.
    """
    if col.is_accuracy:
        return 1
    means = lb.data.loc[lb.data["column"] == col.key, "mean"].dropna().abs()
    biggest = float(means.max()) if not means.empty else 0.0
    if biggest >= 10:
        return 1
    if biggest >= 1 or biggest == 0.0:
        return 3
    return min(6, 2 - math.floor(math.log10(biggest)))


def cell_rows(lb: LeaderboardTable) -> dict[tuple[str, str], pd.Series]:
    """Every row of :attr:`LeaderboardTable.data` keyed by (defense id, column key), for rendering."""
    return {(r.defense, r.column): r for _, r in lb.data.iterrows()}


def decimals_by_column(lb: LeaderboardTable) -> dict[str, int]:
    """:func:`column_decimals` of every column, keyed by column key."""
    return {c.key: column_decimals(lb, c) for c in lb.columns}


def _scaled(col: Column, x: float) -> float:
    return x * 100.0 if col.is_accuracy else x


def format_value(col: Column, x: float, decimals: int, signed: bool = False) -> str:
    """Formats one raw number of ``col`` (accuracies as percentages).

    Args:
        col: the column the number belongs to.
        x: the raw number (accuracies as fractions).
        decimals: decimals to show.
        signed: prefix a ``+`` for positive numbers (differences).

    Returns:
        The text.
    """
    v = _scaled(col, x)
    text = f"{v:+.{decimals}f}" if signed else f"{v:.{decimals}f}"
    if float(text) == 0.0:  # no "-0.0" / "+0.0"
        text = f"{0.0:.{decimals}f}"
    return text


def has_interval(cell: pd.Series) -> bool:
    """Whether the cell has a bootstrap interval (both ends finite)."""
    low, high = cell.get("ci_low"), cell.get("ci_high")
    return not (_isnan(low) or _isnan(high))


def spread_text(col: Column, cell: pd.Series, decimals: int, pm: str = "±", intervals: bool = False) -> str:
    """``" ± 2.1"`` after a mean: the std over seeds, or with ``intervals`` the half-width of the
    bootstrap interval; ``""`` when there is none."""
    if intervals:
        if not has_interval(cell):
            return ""
        return f" {pm} {format_value(col, (float(cell['ci_high']) - float(cell['ci_low'])) / 2, decimals)}"
    if cell["n"] > 1 and not _isnan(cell["std"]):
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


def p_value_text(p: Any) -> str:
    """``"p = 0.012"``, ``"p < 0.001"``; ``""`` for NaN."""
    if _isnan(p):
        return ""
    p = float(p)
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


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
    if base["n"] == 0 or _isnan(cell["delta"]):
        return NOT_RUN
    star = mark if mark and is_significant(cell) else ""
    return format_value(col, float(cell["delta"]), decimals, signed=True) + star + _annotation(cell, na_mark)


# --------------------------------------------------------------------------------------------------
# attacks: access levels, queries and the worst case


def attack_heading(col: Column) -> str:
    """The attack's name with its access level: ``"GMI [white-box]"`` (the name alone without one)."""
    return f"{col.attack_label} [{col.access}]" if col.access else col.attack_label


def attack_labels(lb: LeaderboardTable) -> dict[str, str]:
    """Display name of every attack of the table, by attack id (those of columns a paper table hides
    too: the worst case names the strongest attack, shown or not)."""
    rows = lb.data[~lb.data["attack"].isin([TARGET_COLUMN, WORST_CASE_ATTACK])]
    labels = dict(zip(rows["attack"], rows["attack_label"], strict=True))
    return {**labels, **{c.attack: c.attack_label for c in lb.columns if c.is_attack}}


def queries_text(col: Column, cell: pd.Series) -> str:
    """``"1,500 queries per identity"`` for a black-box or label-only attack's cell that counted them,
    else ``""`` (white-box attacks, and records written before queries were counted)."""
    q = cell.get("queries_per_identity")
    if (col.access or DEFAULT_ACCESS) == DEFAULT_ACCESS or _isnan(q):
        return ""
    q = float(q)
    return f"{q:,.0f} queries per identity" if q >= 100 else f"{q:.3g} queries per identity"


def _seeds_text(seeds: list[int]) -> str:
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(str(s) for s in seeds)}"


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


# --------------------------------------------------------------------------------------------------
# rows


def has_guarantees(lb: LeaderboardTable) -> bool:
    """Whether any row reports a formal (epsilon, delta) guarantee (then the ε column is shown)."""
    return any(i.epsilon is not None for i in lb.defenses)


def guarantee_text(info: DefenseInfo, latex: bool = False) -> str:
    """The (epsilon, delta) cell of a row: ``"8.52 (δ=1e-05)"``, ``"∞"`` or ``"—"`` (none reported).

    Args:
        info: the row.
        latex: LaTeX markup instead of Unicode.
    """
    if info.epsilon is None:
        return "--" if latex else NOT_RUN
    if math.isinf(info.epsilon):
        eps = r"$\infty$" if latex else "∞"
    else:
        eps = f"{info.epsilon:.2f}"
    if info.delta is None:
        return eps
    return f"{eps} ($\\delta$={info.delta:.0e})" if latex else f"{eps} (δ={info.delta:.0e})"


def plural(n: int, word: str, words: str | None = None) -> str:  # "1 seed", "3 seeds", "2 identities"
    return f"{n} {word if n == 1 else (words or word + 's')}"


def seed_summary(lb: LeaderboardTable) -> str:
    """``"3 seeds: 0, 1, 2"``: the seeds of every record behind the leaderboard."""
    seeds = lb.meta.get("seeds") or []
    return f"{plural(len(seeds), 'seed')}: {', '.join(str(s) for s in seeds)}"
