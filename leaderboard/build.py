"""Aggregates result records into a :class:`Leaderboard` (rows = defenses, columns = attack metrics).

The leaderboard is rebuilt from records alone (see :mod:`inversion_bench.results`). Aggregation rules:

* Rows are defenses in ``defense_index`` order. The target's utility (``metrics["test_accuracy"]``) is
  taken once per (defense, seed) -- it is the same for every attack of that target -- then averaged
  over seeds. It is taken from an ``ok`` record when there is one, otherwise from a failed record
  that still carries a finite value (the target trained, the attack failed afterwards).
* Columns are, for every attack in ``attack_index`` order, every metric found in that attack's records
  except ``test_accuracy``: ``attack_acc@1`` and ``attack_acc@5`` first, then the others sorted.
* A cell is the mean and sample standard deviation (``ddof=1``) over the seeds whose record is ``ok``
  and whose value is finite. Failed seeds and missing values (``None``/NaN/inf in ``ok`` records) are
  counted separately and never enter the numbers.
* ``delta`` is, for every non-baseline defense, ``mean(defense) - mean(baseline)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

TEST_ACCURACY = "test_accuracy"
"""Metric name of the target's utility."""

TARGET_COLUMN = ""
"""Value of ``attack`` in :attr:`Leaderboard.data` for the test-accuracy column."""

NEAR_CHANCE_FACTOR = 2.0
"""A test accuracy at most this many times chance level (``1 / num_classes``) is flagged."""

_FIRST_METRICS = ("attack_acc@1", "attack_acc@5")

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
class Leaderboard:
    """Aggregated results of one or more runs of a suite.

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

    def wide(self) -> pd.DataFrame:
        """One row per defense with raw numbers, the layout of :meth:`to_csv`.

        Returns:
            Columns ``defense, defense_label``, then for the test accuracy and every
            ``<attack>/<metric>``: ``_mean, _std, _n, _delta, _failed``, then ``num_classes`` and
            ``near_chance``. Placeholder columns of attacks without any metric are left out.
        """
        from inversion_bench.leaderboard.render import wide_frame

        return wide_frame(self)

    def to_markdown(self) -> str:
        """Renders the leaderboard as Markdown (title, table, Δ table, legend, notes, failures)."""
        from inversion_bench.leaderboard.render import render_markdown

        return render_markdown(self)

    def to_latex(self) -> str:
        """Renders the main table as a LaTeX ``table`` using booktabs rules."""
        from inversion_bench.leaderboard.latex import render_latex

        return render_latex(self)

    def to_csv(self, path: str | Path) -> Path:
        """Writes :meth:`wide` as CSV (raw numbers, full float precision).

        Args:
            path: destination file; parent folders are created.

        Returns:
            The written path.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.wide().to_csv(path, index=False)
        return path

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Writes ``leaderboard.md``, ``leaderboard.csv`` and ``leaderboard.tex`` into ``out_dir``.

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
        return {"markdown": md, "csv": csv, "latex": tex}


# --------------------------------------------------------------------------------------------------
# helpers


def _finite(value: Any) -> float | None:
    """``value`` as a float if it is a finite number, else ``None``."""
    if value is None or isinstance(value, bool | str):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _first_line(text: Any) -> str:
    if not text:
        return ""
    for line in str(text).strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def _where(rec: dict[str, Any]) -> str:
    return str(rec.get("_path") or rec.get("run_dir") or "<record without path>")


def _metric_order(name: str) -> tuple[int, int, str]:
    if name in _FIRST_METRICS:
        return (0, _FIRST_METRICS.index(name), name)
    return (1, 0, name)


def _is_ok(rec: dict[str, Any]) -> bool:
    return rec.get("status") == "ok"


def _validate(rec: dict[str, Any]) -> None:
    missing = [k for k in ("defense", "attack", "seed") if rec.get(k) is None]
    if missing:
        raise ValueError(f"record {_where(rec)} lacks {', '.join(missing)}")
    for key in ("metrics", "directions"):
        if rec.get(key) is not None and not isinstance(rec[key], dict):
            raise ValueError(f"record {_where(rec)}: {key!r} must be a mapping")


def _dedupe(records: Sequence[dict[str, Any]], notes: list[str]) -> list[dict[str, Any]]:
    """One record per (defense, attack, seed); raises on records of different suite versions.

    Among records of the same suite hash an ``ok`` record wins over a failed one, then the newest.
    """
    by_key: dict[tuple[str, str, int], dict[str, Any]] = {}
    superseded = 0
    for rec in records:
        _validate(rec)
        key = (str(rec["defense"]), str(rec["attack"]), int(rec["seed"]))
        old = by_key.get(key)
        if old is None:
            by_key[key] = rec
            continue
        if old.get("suite_hash") != rec.get("suite_hash"):
            raise ValueError(
                f"records for defense={key[0]!r}, attack={key[1]!r}, seed={key[2]} come from different "
                f"suite versions: {_where(old)} (suite_hash={old.get('suite_hash')!r}) and "
                f"{_where(rec)} (suite_hash={rec.get('suite_hash')!r})"
            )
        superseded += 1
        rank_old = (_is_ok(old), str(old.get("created") or ""))
        rank_new = (_is_ok(rec), str(rec.get("created") or ""))
        if rank_new > rank_old:
            by_key[key] = rec
    if superseded:
        notes.append(
            f"{superseded} duplicate record(s) for the same (defense, attack, seed) were superseded "
            "(an ok record wins over a failed one, then the newest)."
        )
    out = list(by_key.values())
    out.sort(
        key=lambda r: (
            int(r.get("defense_index") or 0),
            str(r["defense"]),
            int(r.get("attack_index") or 0),
            str(r["attack"]),
            int(r["seed"]),
        )
    )
    return out


def privacy_guarantee(records: Iterable[dict[str, Any]]) -> tuple[float | None, float | None]:
    """The weakest (epsilon, delta) guarantee reported by the targets of ``records``.

    Each record's ``target`` block holds what the defense's ``report()`` returned; DP defenses put
    ``epsilon`` and ``delta`` there. The leaderboard shows the largest epsilon (and largest delta)
    over seeds, so a row never claims more privacy than its weakest model has.

    Returns:
        ``(epsilon, delta)``, or ``(None, None)`` when no record reports an epsilon.
    """
    eps: list[float] = []
    deltas: list[float] = []
    for r in records:
        target = r.get("target") or {}
        e = target.get("epsilon")
        if e is None:
            continue
        try:
            eps.append(float(e))
        except (TypeError, ValueError):
            continue
        if target.get("delta") is not None:
            deltas.append(float(target["delta"]))
    if not eps:
        return None, None
    return max(eps), (max(deltas) if deltas else None)


def _stats(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    arr = np.asarray(values, dtype=float)
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if arr.size > 1 else math.nan
    return mean, std


def _distinct(records: Iterable[dict[str, Any]], key: str) -> list[Any]:
    seen: list[Any] = []
    for r in records:
        v = r.get(key)
        if v is not None and v not in seen:
            seen.append(v)
    return seen


# --------------------------------------------------------------------------------------------------
# public API


def build(records: Sequence[dict[str, Any]]) -> Leaderboard:
    """Builds the leaderboard from result records alone.

    Args:
        records: records as written by :func:`inversion_bench.results.write_record` (any order). Several
            records for the same (defense, attack, seed) of the same suite version are deduplicated.

    Returns:
        The aggregated :class:`Leaderboard`.

    Raises:
        ValueError: if there are no records, a record lacks its defense/attack/seed, or two records
            for the same (defense, attack, seed) have different ``suite_hash``.
    """
    if not records:
        raise ValueError("no records to build a leaderboard from")
    notes: list[str] = []
    recs = _dedupe(records, notes)
    for r in recs:
        if r.get("status") not in ("ok", "failed"):
            notes.append(f"record {_where(r)} has status {r.get('status')!r}; it is counted as failed.")

    # ---- rows
    defense_ids: list[str] = []
    for r in recs:
        if r["defense"] not in defense_ids:
            defense_ids.append(r["defense"])
    by_defense = {d: [r for r in recs if r["defense"] == d] for d in defense_ids}

    baselines = _distinct(recs, "baseline")
    if len(baselines) > 1:
        raise ValueError(f"records name different baseline defenses: {baselines}")
    baseline = baselines[0] if baselines and baselines[0] in by_defense else None
    if baselines and baseline is None:
        notes.append(f"the baseline defense {baselines[0]!r} has no records; no differences are shown.")

    # ---- columns
    attack_ids: list[str] = []
    for r in sorted(recs, key=lambda r: (int(r.get("attack_index") or 0), str(r["attack"]))):
        if r["attack"] not in attack_ids:
            attack_ids.append(r["attack"])
    by_attack = {a: [r for r in recs if r["attack"] == a] for a in attack_ids}

    def direction_of(metric: str, rs: Iterable[dict[str, Any]], default: str | None) -> str | None:
        found = _distinct(((r.get("directions") or {}) for r in rs), metric)
        found = [f for f in found if f in ("higher", "lower")]
        if len(found) > 1:
            notes.append(f"records disagree on the direction of {metric!r} ({found}); using {found[0]!r}.")
        return found[0] if found else default

    columns = [
        Column(TARGET_COLUMN, "Target", -1, TEST_ACCURACY, direction_of(TEST_ACCURACY, recs, "higher"))
    ]
    for a in attack_ids:
        rs = by_attack[a]
        label = str(_distinct(rs, "attack_label")[0]) if _distinct(rs, "attack_label") else a
        index = int(rs[0].get("attack_index") or 0)
        names: set[str] = set()
        for r in rs:
            names.update((r.get("metrics") or {}).keys())
            names.update((r.get("directions") or {}).keys())
        names.discard(TEST_ACCURACY)
        if not names:
            columns.append(Column(a, label, index, "status", None, placeholder=True))
            continue
        for m in sorted(names, key=_metric_order):
            columns.append(Column(a, label, index, m, direction_of(m, rs, None)))

    # ---- cells
    rows: list[dict[str, Any]] = []
    failures: list[Failure] = []
    missing: list[tuple[str, str, int]] = []
    infos: list[DefenseInfo] = []
    for d in defense_ids:
        rs = by_defense[d]
        d_label = str(_distinct(rs, "defense_label")[0]) if _distinct(rs, "defense_label") else d
        d_index = int(rs[0].get("defense_index") or 0)
        seeds = tuple(sorted({int(r["seed"]) for r in rs}))
        num_classes_all = _distinct(rs, "num_classes")
        if len(num_classes_all) > 1:
            notes.append(f"{d_label}: records disagree on num_classes ({num_classes_all}).")
        num_classes = int(num_classes_all[0]) if num_classes_all else None

        base = {"defense": d, "defense_label": d_label, "defense_index": d_index}

        # test accuracy, once per (defense, seed)
        tcol = columns[0]
        t_values: list[float] = []
        t_seeds: list[int] = []
        t_failed = 0
        for s in seeds:
            seed_recs = [r for r in rs if int(r["seed"]) == s]
            ok_vals = [_finite((r.get("metrics") or {}).get(TEST_ACCURACY)) for r in seed_recs if _is_ok(r)]
            ok_vals = [v for v in ok_vals if v is not None]
            other = [_finite((r.get("metrics") or {}).get(TEST_ACCURACY)) for r in seed_recs if not _is_ok(r)]
            other = [v for v in other if v is not None]
            vals = ok_vals or other
            if not vals:
                t_failed += 1
                continue
            if max(vals) - min(vals) > 1e-9:
                notes.append(
                    f"{d_label}, seed {s}: test accuracy differs between attacks "
                    f"({min(vals):.6g}..{max(vals):.6g}); the first is used."
                )
            t_values.append(vals[0])
            t_seeds.append(s)
        mean, std = _stats(t_values)
        rows.append(
            {
                **base,
                "attack": tcol.attack,
                "attack_label": tcol.attack_label,
                "attack_index": tcol.attack_index,
                "metric": tcol.metric,
                "column": tcol.key,
                "direction": tcol.direction,
                "mean": mean,
                "std": std,
                "n": len(t_values),
                "n_failed": t_failed,
                "n_missing": 0,
                "n_records": len(seeds),
                "values": tuple(t_values),
                "seeds": tuple(t_seeds),
            }
        )
        near = bool(num_classes and t_values and mean <= NEAR_CHANCE_FACTOR / num_classes)
        epsilon, delta = privacy_guarantee(rs)
        infos.append(DefenseInfo(d, d_label, d_index, num_classes, seeds, d == baseline, near, epsilon, delta))

        # attack metrics
        for col in columns[1:]:
            pair = [r for r in rs if r["attack"] == col.attack]
            values: list[float] = []
            v_seeds: list[int] = []
            n_failed = 0
            n_missing = 0
            for r in pair:
                if not _is_ok(r):
                    n_failed += 1
                    continue
                if col.placeholder:
                    continue
                v = _finite((r.get("metrics") or {}).get(col.metric))
                if v is None:
                    n_missing += 1
                    missing.append((d, col.key, int(r["seed"])))
                    continue
                values.append(v)
                v_seeds.append(int(r["seed"]))
            mean, std = _stats(values)
            rows.append(
                {
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
                    "n_records": len(pair),
                    "values": tuple(values),
                    "seeds": tuple(v_seeds),
                }
            )

        for r in rs:
            if not _is_ok(r):
                a = r["attack"]
                a_label = str(r.get("attack_label") or a)
                err = _first_line(r.get("error")) or _first_line(r.get("traceback"))
                if r.get("status") not in ("ok", "failed"):
                    err = err or f"status {r.get('status')!r}"
                failures.append(Failure(d, d_label, a, a_label, int(r["seed"]), err, r.get("_path")))

    data = pd.DataFrame(rows)
    data["delta"] = math.nan
    if baseline is not None:
        base_means = data[data["defense"] == baseline].set_index("column")["mean"]
        mask = data["defense"] != baseline
        data.loc[mask, "delta"] = data.loc[mask, "mean"].to_numpy() - data.loc[mask, "column"].map(
            base_means
        ).to_numpy(dtype=float)
    data = data[list(DATA_COLUMNS)]
    data = data.astype({"n": int, "n_failed": int, "n_missing": int, "n_records": int})

    suites = [str(s) for s in _distinct(recs, "suite")]
    created = sorted(str(c) for c in _distinct(recs, "created"))
    meta = {
        "suites": suites,
        "suite_hashes": [str(h) for h in _distinct(recs, "suite_hash")],
        "code_versions": [str(v) for v in _distinct(recs, "code_version")],
        "devices": [str(v) for v in _distinct(recs, "device")],
        "created": (created[0], created[-1]) if created else None,
        "num_records": len(recs),
        "seeds": sorted({int(r["seed"]) for r in recs}),
    }
    infos.sort(key=lambda i: (i.index, i.defense))
    order = {info.defense: k for k, info in enumerate(infos)}
    data = data.sort_values(by=["defense"], key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
    return Leaderboard(
        suite=" + ".join(suites) if suites else "unnamed suite",
        baseline=baseline,
        defenses=infos,
        columns=columns,
        data=data,
        failures=failures,
        missing=missing,
        notes=notes,
        meta=meta,
    )


def build_from_dirs(run_dirs: Sequence[str | Path]) -> Leaderboard:
    """Builds one leaderboard from the records of several run folders.

    Args:
        run_dirs: run folders, each holding ``records/*.json``.

    Returns:
        The combined :class:`Leaderboard`.

    Raises:
        FileNotFoundError: if a run folder has no ``records`` folder.
        ValueError: if there are no records, or two run folders hold a record for the same
            (defense, attack, seed) with different ``suite_hash`` (the message names both files).
    """
    from inversion_bench.results import load_records

    records: list[dict[str, Any]] = []
    for run_dir in run_dirs:
        rdir = Path(run_dir) / "records"
        if not rdir.is_dir():
            raise FileNotFoundError(f"{run_dir}: no records folder at {rdir}")
        records.extend(load_records(rdir))
    if not records:
        raise ValueError(f"no records found in {', '.join(str(d) for d in run_dirs)}")
    return build(records)
