"""Aggregates result records into a :class:`~inversion_bench.leaderboard.model.LeaderboardTable`.

The table is rebuilt from records alone (see :mod:`inversion_bench.results`). Aggregation rules:

* Rows are defenses in ``defense_index`` order. The target columns come first: the target's utility
  (``metrics["test_accuracy"]``), then every other metric whose ``metric_scopes`` entry is ``"target"``
  (sorted; records without ``metric_scopes`` have only the test accuracy). Each is taken once per
  (defense, seed) -- it is the same for every attack of that target -- then averaged over seeds. It is
  taken from an ``ok`` record when there is one, otherwise from a failed record that still carries a
  finite value (the target trained, the attack failed afterwards).
* Columns are, for every attack (grouped by access level: white-box, black-box, label-only; then in
  ``attack_index`` order), every metric found in that attack's records except the target metrics: the
  worst-case metric first, then the other values its plugin declares (in declaration order), then the
  others sorted. A column's unit (a share is shown in percent) is the one its metric plugin declared, as
  the records keep it (``metric_info``, :class:`~inversion_bench.record_model.MetricInfo`).
* A cell is the mean and sample standard deviation (``ddof=1``) over the seeds whose record is ``ok``
  and whose value is finite. Failed seeds and missing values (``None``/NaN/inf in ``ok`` records) are
  counted separately and never enter the numbers.
* The worst-case column (right after the test accuracy, when some attack has the worst-case metric the
  records name, ``worst_case_metric``: ``attack_acc@1`` unless the suite's ``report:`` or an attack names
  another) is the strongest attack's mean: the highest mean of that metric over the attacks with an ``ok`` record
  and a finite value on every seed of the row, with that attack's std over seeds; the mean of per-seed
  maxima sits beside it (:mod:`inversion_bench.leaderboard.worst_case`).
* Every attack column carries the attack's access level (``record["access"]``; records without one
  are white-box) and the mean ``queries["per_identity"]`` of its ok records.
* ``delta`` is, for every non-baseline defense, ``mean(defense) - mean(baseline)``.
* Every cell has an interval and, against the baseline, a defense test over seeds adjusted for the
  table's multiplicity (:mod:`inversion_bench.leaderboard.uncertainty`), with the records'
  ``report_settings``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from inversion_bench.leaderboard.baseline import table_baseline
from inversion_bench.leaderboard.compute_settings import compute_settings_note
from inversion_bench.leaderboard.configurations import split_configurations
from inversion_bench.leaderboard.model import (
    DATA_COLUMNS,
    DEFAULT_ACCESS,
    NEAR_CHANCE_FACTOR,
    TARGET_COLUMN,
    TARGET_SCOPE,
    TEST_ACCURACY,
    WORST_CASE_ATTACK,
    Column,
    DefenseInfo,
    Failure,
    LeaderboardTable,
    WorstCase,
    access_rank,
)
from inversion_bench.leaderboard.records import (
    current,
    dedupe,
    distinct,
    finite,
    first_line,
    is_ok,
    metric_infos,
    privacy_guarantee,
    where,
)
from inversion_bench.leaderboard.setup_info import metric_label, table_setup
from inversion_bench.leaderboard.uncertainty import add_uncertainty, evaluator_info, report_settings
from inversion_bench.leaderboard.worst_case import worst_case
from inversion_bench.record_model import MetricInfo


@dataclass
class _Cells:
    """What the cells of every row add up to, in row order."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    infos: list[DefenseInfo] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    missing: list[tuple[str, str, int]] = field(default_factory=list)
    worst: dict[str, WorstCase] = field(default_factory=dict)


def _metric_order(infos: Mapping[str, MetricInfo], worst: str | None) -> Callable[[str], tuple[int, int, str]]:
    """Sort key of an attack's metrics: the worst-case metric, then the other values its plugin declares
    (declaration order), then the rest by name."""
    plugin = infos[worst].plugin if worst in infos else None
    siblings = [m for m, i in infos.items() if i.plugin == plugin and m != worst] if plugin else []

    def key(name: str) -> tuple[int, int, str]:
        if name == worst:
            return (0, 0, name)
        if name in siblings:
            return (0, 1 + siblings.index(name), name)
        return (1, 0, name)

    return key


def _stats(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    arr = np.asarray(values, dtype=float)
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if arr.size > 1 else math.nan
    return mean, std


def _label(records: Sequence[dict[str, Any]], key: str, default: str) -> str:
    """The first display name ``key`` in ``records``, else ``default``."""
    return str(distinct(records, key)[0]) if distinct(records, key) else default


def _status_notes(recs: Sequence[dict[str, Any]]) -> list[str]:
    return [
        f"record {where(r)} has status {r.get('status')!r}; it is counted as failed."
        for r in recs
        if r.get("status") not in ("ok", "failed")
    ]


def _by_defense(recs: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The records of every defense, defenses in order of first appearance (the records' order)."""
    return {d: [r for r in recs if r["defense"] == d] for d in dict.fromkeys(r["defense"] for r in recs)}


def _by_attack(recs: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The records of every attack, attacks grouped by access level (white-box, black-box, label-only),
    then in ``attack_index`` (suite) order: a combined table never puts a black-box attack between
    white-box ones."""
    ordered = sorted(recs, key=lambda r: (access_rank(r.get("access") or DEFAULT_ACCESS),
                                          int(r.get("attack_index") or 0), str(r["attack"])))
    return {a: [r for r in recs if r["attack"] == a] for a in dict.fromkeys(r["attack"] for r in ordered)}


def _direction(metric: str, recs: Iterable[dict[str, Any]], default: str | None, notes: list[str]) -> str | None:
    """The direction the records give ``metric`` (the first if they disagree, noted), else ``default``."""
    found = distinct(((r.get("directions") or {}) for r in recs), metric)
    found = [f for f in found if f in ("higher", "lower")]
    if len(found) > 1:
        notes.append(f"records disagree on the direction of {metric!r} ({found}); using {found[0]!r}.")
    return found[0] if found else default


def _access(label: str, recs: Iterable[dict[str, Any]], notes: list[str]) -> str:
    """The attack's access level (records without one are white-box; the first if they disagree, noted)."""
    found = list(dict.fromkeys(str(r.get("access") or DEFAULT_ACCESS) for r in recs))
    if len(found) > 1:
        notes.append(f"{label}: records disagree on the access level ({found}); using {found[0]!r}.")
    return found[0]


def _target_metrics(recs: Sequence[dict[str, Any]], notes: list[str]) -> list[str]:
    """The target-scope metrics: ``test_accuracy``, then every metric some record's ``metric_scopes`` calls
    ``"target"`` (sorted; the first scope when records disagree, noted)."""
    found: dict[str, list[str]] = {}
    for r in recs:
        scopes = r.get("metric_scopes")
        for m, scope in (scopes.items() if isinstance(scopes, dict) else ()):
            if scope in ("attack", TARGET_SCOPE) and scope not in found.setdefault(str(m), []):
                found[str(m)].append(scope)
    for m, scopes in found.items():
        if len(scopes) > 1 and m != TEST_ACCURACY:
            notes.append(f"records disagree on the scope of {m!r} ({scopes}); using {scopes[0]!r}.")
    return [TEST_ACCURACY, *sorted(m for m, sc in found.items() if sc[0] == TARGET_SCOPE and m != TEST_ACCURACY)]


def _unit(infos: Mapping[str, MetricInfo], metric: str) -> str:
    return infos[metric].unit if metric in infos else "score"


def _attack_columns(attack: str, recs: Sequence[dict[str, Any]], notes: list[str],
                    target_metrics: Collection[str], infos: Mapping[str, MetricInfo],
                    worst: str | None) -> list[Column]:
    """The columns of one attack: its metrics in display order, or one placeholder without any."""
    label = _label(recs, "attack_label", attack)
    index = int(recs[0].get("attack_index") or 0)
    access = _access(label, recs, notes)
    names: set[str] = set()
    for r in recs:
        names.update((r.get("metrics") or {}).keys())
        names.update((r.get("directions") or {}).keys())
    names.difference_update(target_metrics)
    if not names:
        return [Column(attack, label, index, "status", None, placeholder=True, access=access)]
    return [Column(attack, label, index, m, _direction(m, recs, None, notes), access=access, unit=_unit(infos, m))
            for m in sorted(names, key=_metric_order(infos, worst))]


def _worst_case_metric(recs: Sequence[dict[str, Any]], notes: list[str]) -> str | None:
    """The worst-case metric the records name (the first if they disagree, noted)."""
    found = distinct(recs, "worst_case_metric")
    if len(found) > 1:
        notes.append(f"records name different worst-case metrics ({found}); the worst case uses {found[0]!r}.")
    return str(found[0]) if found else None


def _columns(recs: Sequence[dict[str, Any]], notes: list[str]) -> list[Column]:
    """The target columns (test accuracy first), the worst case (when an attack has the worst-case metric),
    then every attack's columns in ``attack_index`` order."""
    infos = metric_infos(recs, notes)
    worst = _worst_case_metric(recs, notes)
    targets = _target_metrics(recs, notes)
    columns = [Column(TARGET_COLUMN, "Target", -1, m,
                      _direction(m, recs, "higher" if m == TEST_ACCURACY else None, notes), unit=_unit(infos, m))
               for m in targets]
    attack_cols: list[Column] = []
    for attack, rs in _by_attack(recs).items():
        attack_cols += _attack_columns(attack, rs, notes, targets, infos, worst)
    found = [c for c in attack_cols if c.metric == worst and not c.placeholder]
    if found:
        columns.append(Column(WORST_CASE_ATTACK, "Worst case", -1, found[0].metric, found[0].direction or "lower",
                              unit=found[0].unit))
    return columns + attack_cols


def _row(base: dict[str, Any], col: Column, values: Sequence[float], seeds: Sequence[int], n_failed: int,
         n_missing: int, n_records: int, queries: float = math.nan) -> dict[str, Any]:
    """One row of :attr:`LeaderboardTable.data` (without ``delta``)."""
    mean, std = _stats(values)
    return {
        **base,
        "attack": col.attack,
        "attack_label": col.attack_label,
        "attack_index": col.attack_index,
        "metric": col.metric,
        "column": col.key,
        "direction": col.direction,
        "mean": mean,
        "std": std,
        "n": len(values),
        "n_failed": n_failed,
        "n_missing": n_missing,
        "n_records": n_records,
        "values": tuple(values),
        "seeds": tuple(seeds),
        "queries_per_identity": queries,
    }


def _target_values(recs: Sequence[dict[str, Any]], seeds: Sequence[int], label: str, metric: str,
                   notes: list[str]) -> tuple[list[float], list[int], int]:
    """A target metric of the defense once per seed: (values, their seeds, number of seeds without one)."""
    values: list[float] = []
    v_seeds: list[int] = []
    n_failed = 0
    for s in seeds:
        seed_recs = [r for r in recs if int(r["seed"]) == s]
        ok_vals = [finite((r.get("metrics") or {}).get(metric)) for r in seed_recs if is_ok(r)]
        ok_vals = [v for v in ok_vals if v is not None]
        other = [finite((r.get("metrics") or {}).get(metric)) for r in seed_recs if not is_ok(r)]
        other = [v for v in other if v is not None]
        vals = ok_vals or other
        if not vals:
            n_failed += 1
            continue
        if max(vals) - min(vals) > 1e-9:
            name = "test accuracy" if metric == TEST_ACCURACY else metric
            notes.append(
                f"{label}, seed {s}: {name} differs between attacks "
                f"({min(vals):.6g}..{max(vals):.6g}); the first is used."
            )
        values.append(vals[0])
        v_seeds.append(s)
    return values, v_seeds, n_failed


def _attack_row(base: dict[str, Any], col: Column, recs: Sequence[dict[str, Any]],
                missing: list[tuple[str, str, int]]) -> dict[str, Any]:
    """The cell of one attack column; values missing in ok records are added to ``missing``."""
    pair = [r for r in recs if r["attack"] == col.attack]
    values: list[float] = []
    v_seeds: list[int] = []
    n_failed = 0
    n_missing = 0
    queries = [finite((r.get("queries") or {}).get("per_identity")) for r in pair if is_ok(r)]
    queries = [q for q in queries if q is not None]
    for r in pair:
        if not is_ok(r):
            n_failed += 1
            continue
        if col.placeholder:
            continue
        v = finite((r.get("metrics") or {}).get(col.metric))
        if v is None:
            n_missing += 1
            missing.append((base["defense"], col.key, int(r["seed"])))
            continue
        values.append(v)
        v_seeds.append(int(r["seed"]))
    return _row(base, col, values, v_seeds, n_failed, n_missing, len(pair),
                sum(queries) / len(queries) if queries else math.nan)


def _failures(defense: str, label: str, recs: Sequence[dict[str, Any]]) -> list[Failure]:
    """The defense's records that are not ``ok``, with the first line of their error."""
    out = []
    for r in recs:
        if not is_ok(r):
            a = r["attack"]
            a_label = str(r.get("attack_label") or a)
            err = first_line(r.get("error")) or first_line(r.get("traceback"))
            if r.get("status") not in ("ok", "failed"):
                err = err or f"status {r.get('status')!r}"
            out.append(Failure(defense, label, a, a_label, int(r["seed"]), err, r.get("_path")))
    return out


def _add_defense(cells: _Cells, defense: str, recs: Sequence[dict[str, Any]], columns: Sequence[Column],
                 baseline: str | None, notes: list[str]) -> None:
    """Adds one defense's row info, cells (test accuracy first) and failures to ``cells``."""
    label = _label(recs, "defense_label", defense)
    index = int(recs[0].get("defense_index") or 0)
    seeds = tuple(sorted({int(r["seed"]) for r in recs}))
    num_classes_all = distinct(recs, "num_classes")
    if len(num_classes_all) > 1:
        notes.append(f"{label}: records disagree on num_classes ({num_classes_all}).")
    num_classes = int(num_classes_all[0]) if num_classes_all else None

    base = {"defense": defense, "defense_label": label, "defense_index": index}
    near = False
    for col in (c for c in columns if c.is_target):
        t_values, t_seeds, t_failed = _target_values(recs, seeds, label, col.metric, notes)
        target_row = _row(base, col, t_values, t_seeds, t_failed, 0, len(seeds))
        cells.rows.append(target_row)
        if col.is_test_accuracy:
            near = bool(num_classes and t_values and target_row["mean"] <= NEAR_CHANCE_FACTOR / num_classes)
    epsilon, delta = privacy_guarantee(recs)
    cells.infos.append(
        DefenseInfo(defense, label, index, num_classes, seeds, defense == baseline, near, epsilon, delta)
    )
    for col in (c for c in columns if not c.is_target):
        if col.is_worst_case:
            wc = worst_case(recs, list(dict.fromkeys(c.attack for c in columns if c.is_attack)), col.metric)
            cells.worst[defense] = wc
            cells.rows.append({**_row(base, col, wc.values, wc.seeds, len(wc.failed), len(wc.missing), len(seeds)),
                               "mean_of_maxima": wc.mean_of_maxima})
        else:
            cells.rows.append(_attack_row(base, col, recs, cells.missing))
    cells.failures += _failures(defense, label, recs)


def _data(rows: list[dict[str, Any]], baseline: str | None) -> pd.DataFrame:
    """The long table of :data:`DATA_COLUMNS` with ``delta`` against the baseline's means."""
    data = pd.DataFrame(rows)
    if "mean_of_maxima" not in data:
        data["mean_of_maxima"] = math.nan
    data["delta"] = math.nan
    if baseline is not None:
        base_means = data[data["defense"] == baseline].set_index("column")["mean"]
        mask = data["defense"] != baseline
        data.loc[mask, "delta"] = data.loc[mask, "mean"].to_numpy() - data.loc[mask, "column"].map(
            base_means
        ).to_numpy(dtype=float)
    return data.astype({"n": int, "n_failed": int, "n_missing": int, "n_records": int})


def _meta(recs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Provenance of the records (see :attr:`LeaderboardTable.meta`)."""
    created = sorted(str(c) for c in distinct(recs, "created"))
    return {
        "suites": [str(s) for s in distinct(recs, "suite")],
        "suite_hashes": [str(h) for h in distinct(recs, "suite_hash")],
        "code_versions": [str(v) for v in distinct(recs, "code_version")],
        "devices": [str(v) for v in distinct(recs, "device")],
        "created": (created[0], created[-1]) if created else None,
        "num_records": len(recs),
        "seeds": sorted({int(r["seed"]) for r in recs}),
    }


def aggregate(records: Sequence[dict[str, Any]], baseline: str | None = None,
              baseline_source: str | None = None) -> LeaderboardTable:
    """Aggregates result records into the leaderboard's table model.

    Args:
        records: records as written by :func:`inversion_bench.results.write_record` (any order). Several
            records for the same (defense, attack, seed) with the same ``config_hash`` are one result.
        baseline: the table's baseline defense (default: the one the newest record names,
            :func:`~inversion_bench.leaderboard.baseline.table_baseline`).
        baseline_source: where ``baseline`` comes from, for the provenance (``meta["baseline_source"]``).

    Returns:
        The :class:`~inversion_bench.leaderboard.model.LeaderboardTable`.

    Raises:
        ValueError: if there are no records, a record lacks its defense/attack/seed, or two records
            for the same (defense, attack, seed) are different results, or ``--baseline`` has no records.
    """
    if not records:
        raise ValueError("no records to build a leaderboard from")
    notes: list[str] = []
    recs = dedupe(split_configurations([current(r) for r in records], notes), notes)
    notes += _status_notes(recs)
    notes += compute_settings_note(recs)
    by_defense = _by_defense(recs)
    baseline, source = table_baseline(recs, by_defense, notes, baseline, baseline_source)
    setup = table_setup(recs)
    columns = [replace(c, label=metric_label(setup, c.metric)) for c in _columns(recs, notes)]
    cells = _Cells()
    for defense, rs in by_defense.items():
        _add_defense(cells, defense, rs, columns, baseline, notes)
    settings = report_settings(recs, notes)
    data = add_uncertainty(_data(cells.rows, baseline), by_defense, columns, baseline, settings)
    data = data[list(DATA_COLUMNS)]
    meta = {**_meta(recs), "baseline_source": source}
    infos = sorted(cells.infos, key=lambda i: (i.index, i.defense))
    order = {info.defense: k for k, info in enumerate(infos)}
    data = data.sort_values(by=["defense"], key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
    return LeaderboardTable(
        suite=" + ".join(meta["suites"]) if meta["suites"] else "unnamed suite",
        baseline=baseline,
        defenses=infos,
        columns=columns,
        data=data,
        failures=cells.failures,
        missing=cells.missing,
        notes=notes,
        meta=meta,
        worst_case=cells.worst,
        settings=settings,
        evaluator=evaluator_info(recs, notes),
        setup=setup,
        metric_info=metric_infos(recs, []),
    )
