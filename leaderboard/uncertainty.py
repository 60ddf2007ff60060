"""Intervals and paired tests of the leaderboard's cells, read from the records.

:mod:`~inversion_bench.leaderboard.stats` holds the arithmetic; this module finds what it needs in the
records and fills the ``ci_low, ci_high, ci_method, n_identities, p_value, significant, test`` columns of
:attr:`~inversion_bench.leaderboard.model.LeaderboardTable.data`:

* Per-identity values of a metric ``m`` are the dict ``per_identity_<m>`` (or, for ``attack_<x>``,
  ``per_identity_<x>``: ``attack_acc@1`` -> ``per_identity_acc@1``) in any of the record's
  ``metric_details`` blocks, or the dict ``per_identity`` of the block named ``m`` (``knn_distance``,
  ``facenet_distance``), when it holds one number per identity. The interval is then of the mean over
  identities (for the KNN distance, a mean over images, the two differ when identities have different
  numbers of images). A block whose dict has fewer identities than ``identities_attacked``
  while ``identities_without_images`` is positive (records written before every attacked identity was
  listed) adds those identities as 0-valued identities of unknown id: they count in the interval and
  are left out of the paired test (they cannot be matched).
* An attack cell whose every seed has per-identity values gets the bootstrap over identities (and
  seeds, with several); any other cell with at least two seeds (including one where only some seeds
  have per-identity values) the bootstrap over seeds; a cell with a single value none (NaN, and
  ``ci_method`` says why). Target columns (test accuracy and the other
  target-scope metrics) and the worst case get the interval over seeds only.
* A defense's attack cell is tested against the baseline's cell of the same attack and metric with the
  paired sign-flip permutation test on the (seed, identity) pairs present in both (seeds whose records
  lack per-identity values are left out of the test).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from inversion_bench.leaderboard.formatting import plural
from inversion_bench.leaderboard.model import Column, EvaluatorAudit, EvaluatorInfo, ReportSettings
from inversion_bench.leaderboard.records import finite, is_ok
from inversion_bench.leaderboard.stats import (
    SIGN_FLIP_TEST,
    bootstrap_interval,
    exact_test,
    paired_permutation_test,
    seed_interval,
)

IdentityValues = tuple[dict[str, float], int]
"""Per-identity values of one record: ``{identity id: value}`` and the number of 0-valued identities of
unknown id (see the module docstring)."""


def report_settings(recs: Sequence[dict[str, Any]], notes: list[str]) -> ReportSettings:
    """The records' ``report_settings`` (the first record's when they disagree, noted; defaults without)."""
    found: list[dict[str, Any]] = []
    for r in recs:
        s = r.get("report_settings")
        if isinstance(s, Mapping) and dict(s) not in found:
            found.append(dict(s))
    if not found:
        return ReportSettings()
    if len(found) > 1:
        notes.append(f"records disagree on report_settings ({found}); using the first, {found[0]}.")
    default = ReportSettings()
    s = found[0]
    return ReportSettings(significance=float(s.get("significance", default.significance)),
                          confidence=float(s.get("confidence", default.confidence)),
                          bootstrap=int(s.get("bootstrap", default.bootstrap)),
                          intervals=bool(s.get("intervals", default.intervals)))


def _audit(block: Any) -> EvaluatorAudit | None:
    if not isinstance(block, Mapping):
        return None
    images = block.get("images")
    return EvaluatorAudit(images=int(images) if finite(images) is not None else None,
                          false_acceptance=finite(block.get("false_acceptance")),
                          impostor_acc=finite(block.get("impostor_acc@1")),
                          impostor_acc_max=finite(block.get("impostor_acc@1_max")),
                          impostor_acc_max_identity=block.get("impostor_acc@1_max_identity"))


def _evaluator_info(ev: Mapping[str, Any]) -> EvaluatorInfo:
    audit_blocks = ev.get("audit") if isinstance(ev.get("audit"), Mapping) else {}
    audit = {k: a for k, a in ((k, _audit(v)) for k, v in audit_blocks.items()) if a is not None}
    second = ev.get("second") if isinstance(ev.get("second"), Mapping) else {}
    return EvaluatorInfo(architecture=str(ev["architecture"]) if ev.get("architecture") else None,
                         test_accuracy=finite(ev.get("test_accuracy")), audit=audit,
                         second_architecture=str(second["architecture"]) if second.get("architecture") else None,
                         second_test_accuracy=finite(second.get("test_accuracy")))


def evaluator_info(recs: Sequence[dict[str, Any]], notes: list[str]) -> EvaluatorInfo | None:
    """The evaluation model of the records: the first record's ``evaluator`` block, its audit and second
    model from the first record that has them; a note when records disagree (on architecture or test
    accuracy, or among the records with an audit or a second model, on those); ``None`` without any."""
    infos = [_evaluator_info(r["evaluator"]) for r in recs if isinstance(r.get("evaluator"), Mapping)]
    if not infos:
        return None
    audit = next((i.audit for i in infos if i.audit), {})
    second = next((i for i in infos if i.second_architecture or i.second_test_accuracy is not None), infos[0])
    differ = [name for name, values in (
        ("architecture", {i.architecture for i in infos}),
        ("test accuracy", {i.test_accuracy for i in infos}),
        ("audit", {repr(i.audit) for i in infos if i.audit}),
        ("second evaluation model", {(i.second_architecture, i.second_test_accuracy) for i in infos
                                     if i.second_architecture or i.second_test_accuracy is not None}),
    ) if len(values) > 1]
    if differ:
        notes.append(f"records disagree on the evaluation model's {', '.join(differ)}; the first record's is shown.")
    return EvaluatorInfo(architecture=infos[0].architecture, test_accuracy=infos[0].test_accuracy, audit=audit,
                         second_architecture=second.second_architecture,
                         second_test_accuracy=second.second_test_accuracy)


def identity_values(rec: Mapping[str, Any], metric: str) -> IdentityValues | None:
    """The per-identity values of ``metric`` in one record (see the module docstring), or ``None``."""
    keys = [f"per_identity_{metric}"]
    if metric.startswith("attack_"):
        keys.append(f"per_identity_{metric[len('attack_'):]}")
    details = rec.get("metric_details") or {}
    if not isinstance(details, Mapping):
        return None
    for name, block in details.items():
        if not isinstance(block, Mapping):
            continue
        for key in [*keys, *(["per_identity"] if name == metric else [])]:
            per = block.get(key)
            if not isinstance(per, Mapping) or not per:
                continue
            values = {str(k): v for k, v in ((k, finite(v)) for k, v in per.items()) if v is not None}
            if len(values) < len(per):  # not one number per identity (e.g. counts per identity)
                continue
            attacked = finite(block.get("identities_attacked"))
            without = finite(block.get("identities_without_images"))
            unknown = 0
            if attacked is not None and without and len(values) < int(attacked):
                unknown = min(int(without), int(attacked) - len(values))
            return values, unknown
    return None


def _group(vals: IdentityValues) -> list[float]:
    known, unknown = vals
    return [*known.values(), *([0.0] * unknown)]


def _cell_records(recs: Sequence[dict[str, Any]], col: Column, seeds: Sequence[int]) -> dict[int, dict[str, Any]]:
    """seed -> the ok record of ``col``'s attack on that seed, for the cell's seeds."""
    wanted = set(seeds)
    return {int(r["seed"]): r for r in recs if r["attack"] == col.attack and is_ok(r) and int(r["seed"]) in wanted}


def _per_identity(recs: Sequence[dict[str, Any]], col: Column, seeds: Sequence[int]) -> dict[int, IdentityValues]:
    """seed -> per-identity values of the attack cell, for the cell's seeds that have them."""
    if not col.is_attack or col.placeholder or not seeds:
        return {}
    by_seed = _cell_records(recs, col, seeds)
    out = {s: identity_values(by_seed[s], col.metric) if s in by_seed else None for s in seeds}
    return {s: v for s, v in out.items() if v is not None}


def cell_interval(col: Column, values: Sequence[float], per_identity: Mapping[int, IdentityValues],
                  settings: ReportSettings) -> dict[str, Any]:
    """``ci_low, ci_high, ci_method, n_identities`` of one cell."""
    conf, reps = settings.confidence, settings.bootstrap
    nan = {"ci_low": math.nan, "ci_high": math.nan, "n_identities": 0}
    if not values:
        return {**nan, "ci_method": "no interval: no values"}
    if per_identity and len(per_identity) == len(values):  # every seed has per-identity values
        groups = [_group(v) for v in per_identity.values()]
        n_ids = max(len(g) for g in groups)
        low, high = bootstrap_interval(groups, conf, reps)
        if math.isnan(low):
            return {**nan, "ci_method": "no interval: one identity on one seed"}
        over = "identities and seeds" if len(groups) > 1 else "identities"
        n = f"{plural(n_ids, 'identity', 'identities')} × {plural(len(groups), 'seed')}"
        method = f"bootstrap over {over}, n = {n}"
        return {"ci_low": low, "ci_high": high, "ci_method": method, "n_identities": n_ids}
    if len(values) < 2:
        why = "one seed" if col.is_target or col.is_worst_case else "one seed and no per-identity values"
        return {**nan, "ci_method": f"no interval: {why}"}
    low, high = seed_interval(values, conf, reps)
    return {"ci_low": low, "ci_high": high, "ci_method": f"bootstrap over seeds, n = {plural(len(values), 'seed')}",
            "n_identities": 0}


def paired_test(col: Column, mine: Mapping[int, IdentityValues], base: Mapping[int, IdentityValues],
                settings: ReportSettings) -> tuple[float, str]:
    """(p-value, description) of the paired test of a defense's cell against the baseline's."""
    if not col.is_attack:
        return math.nan, "no paired test (" + ("seed-level values only" if not col.is_worst_case else
                                               "the worst case has seed-level values only") + ")"
    if not mine or not base:
        return math.nan, "no paired test (no per-identity values)"
    a: list[float] = []
    b: list[float] = []
    for seed in sorted(set(mine) & set(base)):
        known_a, known_b = mine[seed][0], base[seed][0]
        for ident in sorted(set(known_a) & set(known_b), key=lambda k: (len(k), k)):
            a.append(known_a[ident])
            b.append(known_b[ident])
    if not a:
        return math.nan, "no paired test (no (seed, identity) pair in both)"
    p = paired_permutation_test(a, b, settings.bootstrap)
    kind = "exact" if exact_test(len(a), settings.bootstrap) else f"Monte Carlo, {settings.bootstrap} sign vectors"
    return p, f"{SIGN_FLIP_TEST} ({kind}; {plural(len(a), '(seed, identity) pair')})"


def add_uncertainty(data: pd.DataFrame, by_defense: Mapping[str, Sequence[dict[str, Any]]],
                    columns: Sequence[Column], baseline: str | None, settings: ReportSettings) -> pd.DataFrame:
    """``data`` with the interval and paired-test columns filled (see the module docstring)."""
    cols = {c.key: c for c in columns}
    per_id: dict[tuple[str, str], dict[int, IdentityValues]] = {}
    for _, row in data.iterrows():
        per_id[(row["defense"], row["column"])] = _per_identity(by_defense[row["defense"]], cols[row["column"]],
                                                                list(row["seeds"]))
    out: dict[str, list[Any]] = {k: [] for k in ("ci_low", "ci_high", "ci_method", "n_identities", "p_value",
                                                 "significant", "test")}
    for _, row in data.iterrows():
        col = cols[row["column"]]
        mine = per_id[(row["defense"], row["column"])]
        ci = cell_interval(col, list(row["values"]), mine, settings)
        if baseline is None or row["defense"] == baseline:
            p, test = math.nan, "" if baseline is None else "baseline"
        elif not row["values"]:
            p, test = math.nan, "no paired test (no values)"
        else:
            p, test = paired_test(col, mine, per_id.get((baseline, row["column"]), {}), settings)
        for k in ("ci_low", "ci_high", "ci_method", "n_identities"):
            out[k].append(ci[k])
        out["p_value"].append(p)
        out["significant"].append(bool(not math.isnan(p) and p < settings.significance))
        out["test"].append(test)
    data = data.copy()
    for k, v in out.items():
        data[k] = v
    return data.astype({"n_identities": int, "significant": bool})
