"""How a leaderboard writes numbers: decimals per column, percentages, signs, p-values, counts.

Every renderer (Markdown, CSV, LaTeX, HTML) writes numbers through these functions, so that every format
shows the same digits.
"""

from __future__ import annotations

import math
from typing import Any

from inversion_bench.leaderboard.model import Column, LeaderboardTable


def is_missing(x: Any) -> bool:
    """Whether a table value is absent: ``None`` or NaN."""
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
    if col.is_share:
        return 1
    means = lb.data.loc[lb.data["column"] == col.key, "mean"].dropna().abs()
    biggest = float(means.max()) if not means.empty else 0.0
    if biggest >= 10:
        return 1
    if biggest >= 1 or biggest == 0.0:
        return 3
    return min(6, 2 - math.floor(math.log10(biggest)))


def decimals_by_column(lb: LeaderboardTable) -> dict[str, int]:
    """:func:`column_decimals` of every column, keyed by column key."""
    return {c.key: column_decimals(lb, c) for c in lb.columns}


def _scaled(col: Column, x: float) -> float:
    return x * 100.0 if col.is_share else x


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


def p_value_text(p: Any) -> str:
    """``"p = 0.012"``, ``"p < 0.001"``; ``""`` for NaN."""
    if is_missing(p):
        return ""
    p = float(p)
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def plural(n: int, word: str, words: str | None = None) -> str:  # "1 seed", "3 seeds", "2 identities"
    return f"{n} {word if n == 1 else (words or word + 's')}"
