"""The table model of a leaderboard: rows (defenses), value columns (attack metrics) and cells.

:func:`inversion_bench.leaderboard.aggregate.aggregate` fills a :class:`LeaderboardTable` from result
records; the renderers (:mod:`~inversion_bench.leaderboard.render`, :mod:`~inversion_bench.leaderboard.latex`,
:mod:`~inversion_bench.leaderboard.html`) read it. This module knows nothing about either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

TEST_ACCURACY = "test_accuracy"
"""Metric name of the target's utility."""

TARGET_COLUMN = ""
"""Value of ``attack`` in :attr:`LeaderboardTable.data` for the test-accuracy column."""

NEAR_CHANCE_FACTOR = 2.0
"""A test accuracy at most this many times chance level (``1 / num_classes``) is flagged."""

DATA_COLUMNS = (
    "defense",
    "defense_label",
    "defense_index",
    "attack",
    "attack_label",
    "attack_index",
    "metric",
    "column",
    "direction",
    "mean",
    "std",
    "n",
    "n_failed",
    "n_missing",
    "n_records",
    "delta",
    "values",
    "seeds",
)


@dataclass(frozen=True)
class Column:
    """One value column of the leaderboard.

    Attributes:
        attack: attack id, or ``""`` (:data:`TARGET_COLUMN`) for the target's test accuracy.
        attack_label: display name of the attack (``"Target"`` for the test accuracy).
        attack_index: position of the attack in the suite (``-1`` for the test accuracy).
        metric: metric name, e.g. ``"attack_acc@1"``.
        direction: ``"higher"`` or ``"lower"`` (better for the defender), or ``None`` if unknown.
        placeholder: ``True`` for the stand-in column of an attack whose records carry no metric at
            all (every pair failed); it only carries failure counts.
    """

    attack: str
    attack_label: str
    attack_index: int
    metric: str
    direction: str | None
    placeholder: bool = False

    @property
    def key(self) -> str:
        """Column key: ``"test_accuracy"`` or ``"<attack>/<metric>"``."""
        return self.metric if self.attack == TARGET_COLUMN else f"{self.attack}/{self.metric}"

    @property
    def is_target(self) -> bool:
        """Whether this is the test-accuracy column."""
        return self.attack == TARGET_COLUMN

    @property
    def is_accuracy(self) -> bool:
        """Whether the metric is an accuracy (a fraction, shown as a percentage)."""
        return "acc" in self.metric


@dataclass(frozen=True)
class DefenseInfo:
    """One leaderboard row.

    Attributes:
        defense: defense id.
        label: display name.
        index: ``defense_index`` from the records.
        num_classes: number of classes of the target task, if known.
        seeds: seeds with at least one record for this defense.
        is_baseline: whether this is the suite's baseline defense.
        near_chance: whether the mean test accuracy is within ``NEAR_CHANCE_FACTOR`` x chance level.
        epsilon: the formal privacy guarantee's epsilon reported by the defense (e.g. DP-SGD from
            Opacus' accountant, ``record["target"]["epsilon"]``), the largest over seeds (the
            weakest guarantee); ``None`` for defenses without one. ``inf`` is kept as ``inf``.
        delta: the matching delta, ``None`` without a guarantee.
    """

    defense: str
    label: str
    index: int
    num_classes: int | None
    seeds: tuple[int, ...]
    is_baseline: bool
    near_chance: bool
    epsilon: float | None = None
    delta: float | None = None


@dataclass(frozen=True)
class Failure:
    """A failed (defense, attack, seed) pair.

    Attributes:
        defense: defense id.
        defense_label: defense display name.
        attack: attack id.
        attack_label: attack display name.
        seed: the seed.
        error: first line of the recorded error (``""`` if none was recorded).
        path: the record file, if known.
    """

    defense: str
    defense_label: str
    attack: str
    attack_label: str
    seed: int
    error: str
    path: str | None = None


@dataclass
class LeaderboardTable:
    """Aggregated results of one or more runs of a suite (numbers and labels, no rendering).

    :class:`inversion_bench.leaderboard.build.Leaderboard` adds rendering and writing.

    Attributes:
        suite: suite name(s), joined with ``" + "`` when the records come from several suites.
        baseline: id of the baseline defense, or ``None`` when there is none among the rows.
        defenses: the rows, in ``defense_index`` order.
        columns: the value columns, test accuracy first, then the attack metrics.
        data: long table, one row per (defense, column) with the columns of :data:`DATA_COLUMNS`
            (means/stds are raw numbers: accuracies are fractions; ``std`` is NaN with fewer than two
            values; ``delta`` is NaN for the baseline row and where either mean is missing).
        failures: the failed pairs, in defense/attack/seed order.
        missing: (defense, column key, seed) of values that were ``None``/non-finite in ok records.
        notes: further remarks (superseded duplicate records, inconsistent records).
        meta: provenance: ``suite_hashes``, ``code_versions``, ``devices``, ``created`` (min, max),
            ``num_records``, ``seeds``.
    """

    suite: str
    baseline: str | None
    defenses: list[DefenseInfo]
    columns: list[Column]
    data: pd.DataFrame
    failures: list[Failure] = field(default_factory=list)
    missing: list[tuple[str, str, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def baseline_label(self) -> str | None:
        """Display name of the baseline defense, if any."""
        for d in self.defenses:
            if d.is_baseline:
                return d.label
        return None

    def cell(self, defense: str, column: str) -> pd.Series:
        """The data row of one cell.

        Args:
            defense: defense id.
            column: column key (``"test_accuracy"`` or ``"<attack>/<metric>"``).

        Returns:
            The matching row of :attr:`data`.

        Raises:
            KeyError: if there is no such cell.
        """
        sel = self.data[(self.data["defense"] == defense) & (self.data["column"] == column)]
        if sel.empty:
            raise KeyError((defense, column))
        return sel.iloc[0]
