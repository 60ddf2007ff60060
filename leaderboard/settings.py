"""How a leaderboard states its numbers and which columns its paper table shows, as the records keep it.

Every record carries the suite's ``report:`` section as ``record["report_settings"]``
(``products.record.base_record``); :func:`~inversion_bench.leaderboard.uncertainty.report_settings`
reads it back into a :class:`ReportSettings`, with these defaults for whatever a record written
before a setting existed lacks, so a table rebuilt from records alone reads the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CAPTIONS = ("short", "full")
"""Lengths of the LaTeX caption: ``short`` summarises the setup and points to the report page for the
rest; ``full`` lists every attack's parameters."""


@dataclass(frozen=True)
class TableSettings:
    """The paper table (``leaderboard.tex`` and the main tables of ``leaderboard.md``); the CSV and the
    page always carry every column.

    Attributes:
        metrics: metric keys whose columns are shown (the test accuracy and the worst case always are);
            ``None``: every metric.
        attacks: attack ids whose columns are shown; ``None``: every attack.
        caption: ``"short"`` or ``"full"`` (:data:`CAPTIONS`).
    """

    metrics: tuple[str, ...] | None = None
    attacks: tuple[str, ...] | None = None
    caption: str = "short"

    @property
    def selects(self) -> bool:
        """Whether some columns may be left out of the paper table."""
        return self.metrics is not None or self.attacks is not None


@dataclass(frozen=True)
class ReportSettings:
    """How the leaderboard states uncertainty (``record["report_settings"]``; these defaults for records
    written before the setting existed).

    Attributes:
        significance: a Δ to the baseline is marked only when its defense test's adjusted p-value is below it.
        confidence: coverage of the intervals.
        bootstrap: bootstrap resamples per interval (and Monte Carlo draws per permutation test).
        intervals: Markdown and LaTeX show mean ± interval half-width instead of mean ± std.
        correction: multiplicity correction over the table's defense tests: ``"bh"``
            (Benjamini–Hochberg), ``"holm"`` or ``"none"``. Records written before it existed read
            ``"bh"``.
        seed_test: the defense test over seeds: ``"two-sample"`` or ``"paired"``
            (:data:`~inversion_bench.leaderboard.significance.SEED_TESTS`).
        table: the paper table's columns and caption (``report.table``; every column and a short
            caption for records written before it existed).
    """

    significance: float = 0.05
    confidence: float = 0.95
    bootstrap: int = 2000
    intervals: bool = False
    correction: str = "bh"
    seed_test: str = "two-sample"
    table: TableSettings = TableSettings()


def _names(value: Any) -> tuple[str, ...] | None:
    """A list of names as a tuple, ``None`` for anything else (a missing or malformed setting)."""
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def table_settings(block: Any, notes: list[str]) -> TableSettings:
    """The ``table`` block of a record's ``report_settings`` (defaults without one; a malformed value is
    replaced by its default, noted).

    Args:
        block: ``record["report_settings"].get("table")``.
        notes: the table's notes, appended to.

    Returns:
        The paper table's settings.
    """
    if not isinstance(block, Mapping):
        return TableSettings()
    caption = block.get("caption", "short")
    if caption not in CAPTIONS:
        notes.append(f"report_settings name an unknown caption length ({caption!r}); using 'short'.")
        caption = "short"
    out = TableSettings(metrics=_names(block.get("metrics")), attacks=_names(block.get("attacks")),
                        caption=str(caption))
    for key in ("metrics", "attacks"):
        if block.get(key) is not None and getattr(out, key) is None:
            notes.append(f"report_settings.table.{key} is not a list of names ({block.get(key)!r}); showing every "
                         "column.")
    return out
