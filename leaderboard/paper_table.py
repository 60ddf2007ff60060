"""The paper table: the columns the suite's ``report.table`` selects, for ``leaderboard.tex`` and the
tables of ``leaderboard.md`` (the CSV and the page always carry every column).

The selection only hides columns: every number, interval and adjusted p-value is the one of the full
table (the multiplicity correction counts every test of the table, shown or not), and the worst case
stays the strongest of all the suite's attacks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from inversion_bench.leaderboard.model import Column, LeaderboardTable
from inversion_bench.leaderboard.settings import CAPTIONS, TableSettings


def _shown(col: Column, metrics: tuple[str, ...] | None, attacks: tuple[str, ...] | None) -> bool:
    if col.is_test_accuracy or col.is_worst_case:
        return True
    if col.is_target:
        return metrics is None or col.metric in metrics
    if attacks is not None and col.attack not in attacks:
        return False
    return col.placeholder or metrics is None or col.metric in metrics


def paper_columns(lb: LeaderboardTable) -> list[Column]:
    """The columns of ``lb`` that its ``report.table`` settings show, in table order: the test accuracy
    and the worst case always, then the target metrics and the attack columns named by ``metrics`` and
    ``attacks`` (every one where a setting is not given)."""
    table = lb.settings.table
    return [c for c in lb.columns if _shown(c, table.metrics, table.attacks)]


def paper_view(lb: LeaderboardTable) -> LeaderboardTable:
    """``lb`` with only its :func:`paper_columns` (the same object when every column shows)."""
    shown = paper_columns(lb)
    return lb if len(shown) == len(lb.columns) else replace(lb, columns=shown)


def hidden_note(lb: LeaderboardTable) -> str | None:
    """One sentence saying how many columns ``report.table`` leaves out and where they are, or ``None``."""
    shown = paper_columns(lb)
    hidden = len(lb.columns) - len(shown)
    if not hidden:
        return None
    note = (f"This table shows {len(shown)} of {len(lb.columns)} columns (report.table); every column is in "
            "leaderboard.csv and on the report page.")
    if {c.attack for c in lb.columns if c.is_attack} - {c.attack for c in shown if c.is_attack} and any(
            c.is_worst_case for c in shown):
        note += " The worst case covers every attack, shown or not."
    return note


def with_table(lb: LeaderboardTable, table: Mapping[str, Any] | None) -> LeaderboardTable:
    """``lb`` with the paper table settings ``table`` (``bench report --table-metrics/--table-attacks/--caption``)
    in place of the records' (keys not given keep the records' value).

    Args:
        lb: the leaderboard.
        table: ``{"metrics": [...], "attacks": [...], "caption": "short" | "full"}``, any subset; ``None``
            leaves ``lb`` as it is.

    Returns:
        The leaderboard with the settings (the same object for ``None``).

    Raises:
        ValueError: a metric or attack the table has no column of, or an unknown caption; the message
            names the option and the names to choose from.
    """
    if not table:
        return lb
    attacks = list(dict.fromkeys(c.attack for c in lb.columns if c.is_attack))
    metrics = list(dict.fromkeys(c.metric for c in lb.columns if not c.is_worst_case and not c.placeholder))
    for option, key, known in (("--table-metrics", "metrics", metrics), ("--table-attacks", "attacks", attacks)):
        unknown = [n for n in table.get(key) or [] if n not in known]
        if unknown:
            raise ValueError(f"{option}: {unknown[0]!r} is not {key[:-1]} of this table; choose from "
                             f"{', '.join(known)}")
    if table.get("caption", "short") not in CAPTIONS:
        raise ValueError(f"--caption: {table['caption']!r}; choose short or full")
    current = lb.settings.table
    chosen = TableSettings(
        metrics=tuple(table["metrics"]) if table.get("metrics") else current.metrics,
        attacks=tuple(table["attacks"]) if table.get("attacks") else current.attacks,
        caption=str(table.get("caption") or current.caption))
    return replace(lb, settings=replace(lb.settings, table=chosen))
