"""Builds a :class:`Leaderboard` (rows = defenses, columns = attack metrics) from result records and writes it.

:func:`build` aggregates the records (:mod:`inversion_bench.leaderboard.aggregate`, aggregation rules there)
into the table model (:mod:`inversion_bench.leaderboard.model`); :class:`Leaderboard` renders it as Markdown
and CSV (:mod:`inversion_bench.leaderboard.render`) and LaTeX (:mod:`inversion_bench.leaderboard.latex`)
and writes those files.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from inversion_bench.leaderboard.aggregate import aggregate
from inversion_bench.leaderboard.equal_utility import equal_utility
from inversion_bench.leaderboard.latex import render_latex
from inversion_bench.leaderboard.model import LeaderboardTable
from inversion_bench.leaderboard.records import current
from inversion_bench.leaderboard.render import render_markdown, wide_frame

log = logging.getLogger(__name__)


@dataclass
class Leaderboard(LeaderboardTable):
    """Aggregated results of one or more runs of a suite, with its renderings.

    The attributes are those of :class:`~inversion_bench.leaderboard.model.LeaderboardTable`.
    """

    def wide(self) -> pd.DataFrame:
        """One row per defense with raw numbers, the layout of :meth:`to_csv`.

        Returns:
            Columns ``defense, defense_label``, then for every target column (``test_accuracy`` and
            the other target-scope metrics), the worst case and every ``<attack>/<metric>``:
            ``_mean, _std, _n, _delta, _failed, _ci_low, _ci_high, _p_value, _p_adjusted, _significant,
            _testable, _seeds_needed, _p_identity`` (the interval of the mean, NaN without one; the defense
            test over seeds against the baseline, its adjusted p-value, whether that is below the level,
            whether the seeds suffice to test and how many it needs; the identity-level test); the worst
            case adds ``worst_case_mean_of_maxima``, ``worst_case_attack`` (the strongest attack),
            ``worst_case_attacks`` (each seed's maximum, ``"seed:attack;..."``)
            and ``worst_case_covered`` (``"seed:k/n;..."``); every attack adds ``<attack>/access`` and
            ``<attack>/queries_per_identity`` before its metrics; then ``num_classes``, ``near_chance``,
            ``epsilon`` and ``delta``. Rows in ``defense_index`` order. Placeholder columns of attacks
            without any metric are left out.
        """
        return wide_frame(self)

    def to_markdown(self) -> str:
        """Renders the leaderboard as Markdown (title, table, Δ table, legend, notes, failures)."""
        return render_markdown(self)

    def to_latex(self, deltas: bool = False) -> str:
        """Renders the main table as a LaTeX ``table`` using booktabs rules (``deltas``: add Δ rows)."""
        return render_latex(self, deltas)

    def to_csv(self, path: str | Path) -> Path:
        """Writes :meth:`wide` as CSV (raw numbers, full float precision; a text cell that a spreadsheet
        would read as a formula gets a leading ``'``, see :func:`~inversion_bench.leaderboard.escape.csv_text`).

        Args:
            path: destination file; parent folders are created.

        Returns:
            The written path.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        from inversion_bench.leaderboard.escape import write_csv

        return write_csv(self.wide(), path)

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Writes ``leaderboard.md``, ``leaderboard.csv`` and ``leaderboard.tex`` into ``out_dir``, and
        ``equal_utility.csv`` when the records hold a sweep.

        Args:
            out_dir: destination folder; created if needed.

        Returns:
            ``{"markdown": ..., "csv": ..., "latex": ...}`` paths.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        md = out / "leaderboard.md"
        md.write_text(self.to_markdown(), encoding="utf-8")
        tex = out / "leaderboard.tex"
        tex.write_text(self.to_latex(), encoding="utf-8")
        csv = self.to_csv(out / "leaderboard.csv")
        files = {"markdown": md, "csv": csv, "latex": tex}
        if self.equal_utility is not None and not self.equal_utility.empty:
            files["equal_utility_csv"] = out / "equal_utility.csv"
            from inversion_bench.leaderboard.escape import write_csv

            write_csv(self.equal_utility, files["equal_utility_csv"])
        return files


def build(records: Sequence[dict[str, Any]], baseline: str | None = None,
          baseline_source: str | None = None) -> Leaderboard:
    """Builds the leaderboard from result records alone.

    Args:
        records: records as written by :func:`inversion_bench.results.write_record` (any order). Several
            records for the same (defense, attack, seed) with the same ``config_hash`` are one result.
        baseline: the table's baseline defense (default: the newest record's, see
            :mod:`inversion_bench.leaderboard.baseline`).
        baseline_source: where ``baseline`` comes from (shown in the provenance).

    Returns:
        The aggregated :class:`Leaderboard`.

    Raises:
        ValueError: if there are no records, a record lacks its defense/attack/seed, or two records
            for the same (defense, attack, seed) are different results.
    """
    records = [current(r) for r in records]
    table = aggregate(records, baseline, baseline_source)
    table.equal_utility = equal_utility(table, records)
    return Leaderboard(**{f.name: getattr(table, f.name) for f in fields(table)})


def build_from_dirs(run_dirs: Sequence[str | Path], baseline: str | None = None) -> Leaderboard:
    """Builds one leaderboard from the records of several run folders.

    Args:
        run_dirs: run folders, each holding ``records/*.json``.
        baseline: the table's baseline defense (default: the first folder's ``suite.json``).

    Returns:
        The combined :class:`Leaderboard`.

    Raises:
        FileNotFoundError: if a run folder has no ``records`` folder.
        ValueError: if there are no (readable) records, or two run folders hold a record for the same
            (defense, attack, seed) that are different results (the message names both files).
    """
    from inversion_bench.results import load_records

    records: list[dict[str, Any]] = []
    unreadable: list[tuple[Path, str]] = []
    for run_dir in run_dirs:
        rdir = Path(run_dir) / "records"
        if not rdir.is_dir():
            raise FileNotFoundError(f"{run_dir}: no records folder at {rdir}")
        records.extend(load_records(rdir, unreadable))
    if not records:
        raise ValueError(f"no records found in {', '.join(str(d) for d in run_dirs)}"
                         + "".join(f"; {note}" for note in unreadable_notes(unreadable)))
    from inversion_bench.leaderboard.baseline import choose_baseline

    board = build(records, *choose_baseline([Path(d) for d in run_dirs], baseline))
    board.notes.extend(unreadable_notes(unreadable))
    return board


def unreadable_notes(unreadable: Sequence[tuple[Path, str]]) -> list[str]:
    """One note (also a warning in the log) per record file that could not be read and was skipped."""
    notes = [f"record {path} skipped: it cannot be read ({reason}); `bench run` recomputes its pair"
             for path, reason in unreadable]
    for note in notes:
        log.warning("%s", note)
    return notes
