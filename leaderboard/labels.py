"""The words of a leaderboard: marks, legends, attack headings and the texts of a row (guarantees, seeds).

Cells (a mean with its spread and notes) are written by :mod:`~inversion_bench.leaderboard.cells`; numbers
by :mod:`~inversion_bench.leaderboard.number_format`.
"""

from __future__ import annotations

import math

import pandas as pd

from inversion_bench.leaderboard.model import (
    DEFAULT_ACCESS,
    TARGET_COLUMN,
    WORST_CASE_ATTACK,
    Column,
    DefenseInfo,
    LeaderboardTable,
)
from inversion_bench.leaderboard.number_format import is_missing, plural

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
def worst_case_words(lb: LeaderboardTable) -> str:
    """The worst-case metric in words: its declared label (``"attack accuracy"``), else its name."""
    col = lb.worst_case_column
    metric = col.metric if col is not None else ""
    info = lb.metric_info.get(metric)
    return info.label if info is not None and info.label else metric


def worst_case_help(lb: LeaderboardTable) -> str:
    """What the worst-case column is, in words (legends and tooltips), for the table's worst-case metric."""
    col = lb.worst_case_column
    metric = col.metric if col is not None else ""
    words = worst_case_words(lb)
    what = f"{words} ({metric}, over seeds)" if words != metric else f"{metric} (over seeds)"
    return (
        f"Worst case: the strongest attack's mean, i.e. the highest mean {what} of the attacks with an ok record "
        "on every seed of the row, ± its std over seeds; the attack named is that attack. A defense is only as "
        "strong as the strongest attack against it. The mean of per-seed maxima (CSV worst_case_mean_of_maxima, "
        "tooltip) is larger by construction: for two equally strong attacks by about 0.56 seed standard "
        "deviations whatever the number of seeds."
    )


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
    if (col.access or DEFAULT_ACCESS) == DEFAULT_ACCESS or is_missing(q):
        return ""
    q = float(q)
    return f"{q:,.0f} queries per identity" if q >= 100 else f"{q:.3g} queries per identity"


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


def seed_summary(lb: LeaderboardTable) -> str:
    """``"3 seeds: 0, 1, 2"``: the seeds of every record behind the leaderboard."""
    seeds = lb.meta.get("seeds") or []
    return f"{plural(len(seeds), 'seed')}: {', '.join(str(s) for s in seeds)}"
