"""The table model of a leaderboard: rows (defenses), value columns (attack metrics) and cells.

:func:`inversion_bench.leaderboard.aggregate.aggregate` fills a :class:`LeaderboardTable` from result
records; the renderers (:mod:`~inversion_bench.leaderboard.render`, :mod:`~inversion_bench.leaderboard.latex`,
:mod:`~inversion_bench.leaderboard.html`) read it. This module knows nothing about either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from inversion_bench.leaderboard.settings import ReportSettings
from inversion_bench.record_model import MetricInfo

TEST_ACCURACY = "test_accuracy"
"""Metric name of the target's utility."""

TARGET_COLUMN = ""
"""Value of ``attack`` in :attr:`LeaderboardTable.data` for the target columns (test accuracy and every
metric whose ``metric_scopes`` entry is ``"target"``)."""

TARGET_SCOPE = "target"
"""``record["metric_scopes"]`` value of a metric that describes the target (one value per defense and seed)."""

NEAR_CHANCE_FACTOR = 2.0
"""A test accuracy at most this many times chance level (``1 / num_classes``) is flagged."""

WORST_CASE = "worst_case"
"""Column key of the worst-case column (the strongest attack's mean attack accuracy)."""

WORST_CASE_ATTACK = "*"
"""Value of ``attack`` in :attr:`LeaderboardTable.data` for the worst-case column."""

DEFAULT_ACCESS = "white-box"
"""Access level of records that do not say (written before attacks declared one)."""
ACCESS_ORDER = ("white-box", "black-box", "label-only")
"""Order of the access levels in tables (most to least the attacker sees); an unknown level comes last."""


def access_rank(access: str) -> int:
    """Position of ``access`` in :data:`ACCESS_ORDER` (after every known level when unknown)."""
    return ACCESS_ORDER.index(access) if access in ACCESS_ORDER else len(ACCESS_ORDER)


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
    "queries_per_identity",
    "ci_low",
    "ci_high",
    "ci_method",
    "n_identities",
    "p_value",
    "p_adjusted",
    "testable",
    "seeds_needed",
    "significant",
    "test",
    "p_identity",
    "test_identity",
    "mean_of_maxima",
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
        access: the attack's access level (``"white-box"``, ``"black-box"`` or ``"label-only"``);
            ``None`` for the test-accuracy and worst-case columns.
        label: the metric's display name (e.g. ``fid (Inception)``; default: ``metric``). Keys never change.
        unit: the unit the metric plugin declared (``"share"``, ``"score"``, ``"distance"``; see
            :class:`~inversion_bench.record_model.MetricOutput`); a share is shown in percent.
    """

    attack: str
    attack_label: str
    attack_index: int
    metric: str
    direction: str | None
    placeholder: bool = False
    access: str | None = None
    label: str | None = None
    unit: str = "score"

    @property
    def metric_name(self) -> str:
        """The metric as shown in headers: :attr:`label`, else the metric key."""
        return self.label or self.metric

    @property
    def key(self) -> str:
        """Column key: ``"test_accuracy"``, ``"worst_case"`` or ``"<attack>/<metric>"``."""
        if self.attack == TARGET_COLUMN:
            return self.metric
        return WORST_CASE if self.attack == WORST_CASE_ATTACK else f"{self.attack}/{self.metric}"

    @property
    def is_target(self) -> bool:
        """Whether this is a target column (the test accuracy or another target-scope metric)."""
        return self.attack == TARGET_COLUMN

    @property
    def is_test_accuracy(self) -> bool:
        """Whether this is the target's test-accuracy column."""
        return self.is_target and self.metric == TEST_ACCURACY

    @property
    def is_worst_case(self) -> bool:
        """Whether this is the worst-case column (the maximum over attacks)."""
        return self.attack == WORST_CASE_ATTACK

    @property
    def is_attack(self) -> bool:
        """Whether this column belongs to one attack (neither the test accuracy nor the worst case)."""
        return not (self.is_target or self.is_worst_case)

    @property
    def is_share(self) -> bool:
        """Whether the metric is a share (a fraction, shown as a percentage): its plugin declared unit
        ``"share"``."""
        return self.unit == "share"


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


@dataclass(frozen=True)
class WorstCase:
    """A defense's worst case: the strongest attack's mean ``attack_acc@1`` (lower is better for the defender).

    The headline is the highest mean over seeds of any attack that has an ``ok`` record with a finite
    value on *every* seed of the row (:attr:`complete`), so every candidate is averaged over the same
    seeds. Beside it, the mean over seeds of each seed's maximum over those attacks (:attr:`maxima`): a
    larger quantity (for two equally strong attacks by about 0.56 seed standard deviations, however many
    seeds), kept in the CSV and the tooltip.

    Attributes:
        n_attacks: number of attacks of the table.
        seeds: the seeds of the headline's values (the row's seeds when an attack is complete), ascending.
        values: the headline attack's value on each of those seeds.
        attack: the headline attack (the highest mean among :attr:`complete`, ties in attack order);
            ``None`` when no attack has a value on every seed.
        complete: the attacks with a value on every seed of the row, in table order.
        maxima: each seed's maximum over :attr:`complete` (same seeds as :attr:`values`).
        attacks: the attack of each of those maxima (the first in attack order on ties).
        covered: ``(seed, number of attacks with a value)`` for every seed of the defense.
        failed: seeds without any value where some record failed.
        missing: seeds without any value where every record was ok but lacked the value.
    """

    n_attacks: int
    seeds: tuple[int, ...]
    values: tuple[float, ...]
    attack: str | None
    complete: tuple[str, ...]
    maxima: tuple[float, ...]
    attacks: tuple[str, ...]
    covered: tuple[tuple[int, int], ...]
    failed: tuple[int, ...] = ()
    missing: tuple[int, ...] = ()

    @property
    def partial(self) -> bool:
        """Whether the headline covers only some attacks of the table (some attack lacks a value on a seed)."""
        return len(self.complete) < self.n_attacks

    @property
    def mean_of_maxima(self) -> float:
        """The mean over seeds of each seed's maximum (NaN without values)."""
        return sum(self.maxima) / len(self.maxima) if self.maxima else float("nan")


@dataclass(frozen=True)
class EvaluatorAudit:
    """The evaluation model's audit on images of identities it must not recognise as attacked ones.

    Attributes:
        images: number of audit images.
        false_acceptance: share of them the evaluation model accepts as an attacked identity.
        impostor_acc: share of them it classifies as the identity an impostor would claim (Acc@1).
        impostor_acc_max: the highest per-identity impostor acceptance (None in older records).
        impostor_acc_max_identity: the identity (class index) it belongs to.
    """

    images: int | None
    false_acceptance: float | None
    impostor_acc: float | None
    impostor_acc_max: float | None = None
    impostor_acc_max_identity: int | None = None


@dataclass(frozen=True)
class EvaluatorInfo:
    """The evaluation model behind the attack accuracies (``record["evaluator"]``).

    Attributes:
        architecture: its architecture, if recorded.
        test_accuracy: its accuracy on the private test split, if recorded.
        audit: ``{"private_other": ..., "public": ...}``; empty when the records carry no audit.
        second_architecture: the second evaluation model's architecture, if any.
        second_test_accuracy: its test accuracy, if any.
    """

    architecture: str | None = None
    test_accuracy: float | None = None
    audit: dict[str, EvaluatorAudit] = field(default_factory=dict)
    second_architecture: str | None = None
    second_test_accuracy: float | None = None


@dataclass
class LeaderboardTable:
    """Aggregated results of one or more runs of a suite (numbers and labels, no rendering).

    :class:`inversion_bench.leaderboard.build.Leaderboard` adds rendering and writing.

    Attributes:
        suite: suite name(s), joined with ``" + "`` when the records come from several suites.
        baseline: id of the baseline defense, or ``None`` when there is none among the rows.
        defenses: the rows, in ``defense_index`` order (the Markdown table and the HTML page show them
            in :func:`~inversion_bench.leaderboard.worst_case.ranked` order).
        columns: the value columns: the target columns (test accuracy first, then the other
            target-scope metrics sorted), then the worst case (when some attack has an
            ``attack_acc@1``), then the attack metrics.
        data: long table, one row per (defense, column) with the columns of :data:`DATA_COLUMNS`
            (means/stds are raw numbers: accuracies are fractions; ``std`` is NaN with fewer than two
            values; ``delta`` is NaN for the baseline row and where either mean is missing;
            ``queries_per_identity`` is the mean over the ok records that counted queries, NaN
            otherwise and for the target and worst-case columns; ``ci_low``/``ci_high`` are the ends
            of the interval of the mean (:mod:`~inversion_bench.leaderboard.stats`: crossed bootstrap
            over seeds and identities, or t over seeds; NaN without one), ``ci_method`` says what it
            resamples or why there is none,
            ``n_identities`` the identities per seed it resamples (0 for an interval over seeds);
            ``p_value`` is the defense test against the baseline over seeds (the trained model is the
            unit; :mod:`~inversion_bench.leaderboard.significance`), NaN for the baseline and without
            values; ``testable`` whether that test can reach ``settings.significance`` with the seeds at
            hand, ``seeds_needed`` the seeds per row it needs (0 when testable); ``p_adjusted`` the
            p-value adjusted over the table's testable tests (``settings.correction``), ``significant``
            whether it is below the level (False when NaN or not testable); ``test`` names the test and
            its seeds, or says why there is none; ``p_identity`` and ``test_identity`` the paired
            sign-flip test over (seed, identity) pairs, which asks whether these trained models differ
            on these identities and never marks a Δ; ``mean_of_maxima`` (worst-case column only) the
            mean over seeds of each seed's maximum over attacks).
        worst_case: the :class:`WorstCase` of every defense (empty without a worst-case column).
        failures: the failed pairs, in defense/attack/seed order.
        missing: (defense, column key, seed) of values that were ``None``/non-finite in ok records.
        notes: further remarks (superseded duplicate records, inconsistent records).
        meta: provenance: ``suite_hashes``, ``code_versions``, ``devices``, ``created`` (min, max),
            ``num_records``, ``seeds``.
        equal_utility: every sweep's attack accuracy at the baseline's test accuracy
            (:func:`inversion_bench.leaderboard.equal_utility.equal_utility`; None or empty without sweeps).
        settings: the :class:`ReportSettings` of the records (the first record's when they disagree).
        evaluator: the evaluation model of the records (the first record's), ``None`` when no record
            names one.
        metric_info: every metric's declaration as the records keep it (unit, direction, scope,
            per-identity values, words for legends).
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
    worst_case: dict[str, WorstCase] = field(default_factory=dict)
    settings: ReportSettings = field(default_factory=ReportSettings)
    evaluator: EvaluatorInfo | None = None
    equal_utility: pd.DataFrame | None = None
    setup: dict[str, Any] | None = None
    metric_info: dict[str, MetricInfo] = field(default_factory=dict)

    @property
    def worst_case_column(self) -> Column | None:
        """The worst-case column, ``None`` when the table has none."""
        return next((c for c in self.columns if c.is_worst_case), None)

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
            column: column key (``"test_accuracy"``, ``"worst_case"`` or ``"<attack>/<metric>"``).

        Returns:
            The matching row of :attr:`data`.

        Raises:
            KeyError: if there is no such cell.
        """
        sel = self.data[(self.data["defense"] == defense) & (self.data["column"] == column)]
        if sel.empty:
            raise KeyError((defense, column))
        return sel.iloc[0]
