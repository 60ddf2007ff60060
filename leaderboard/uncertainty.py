"""Intervals and defense tests of the leaderboard's cells, read from the records.

:mod:`~inversion_bench.leaderboard.stats` (intervals) and :mod:`~inversion_bench.leaderboard.significance`
(tests, multiplicity) hold the arithmetic; this module finds what they need in the records and fills the
``ci_low, ci_high, ci_method, n_identities, p_value, p_adjusted, testable, seeds_needed, significant, test,
p_identity, test_identity`` columns of :attr:`~inversion_bench.leaderboard.model.LeaderboardTable.data`:

* Per-identity values of a metric ``m`` are the record's ``per_identity[m]`` (written for the metrics whose
  plugin declares ``per_identity``; :func:`~inversion_bench.record_model.upgrade` finds them in records
  written before). Identities of unknown id (version-1 records that counted attacked identities without
  images only in a total) count as 0-valued identities in the interval (as ``?0, ?1, ...``) and are left
  out of the identity-level test.
* **Interval.** An attack cell whose every seed has per-identity values gets the crossed interval over
  seeds and identities (:func:`~inversion_bench.leaderboard.stats.crossed_interval`; with one seed it is
  over the identities of one trained model, and says so). Any other cell gets Student's t interval over
  seeds, and none with fewer than three seeds ("too few seeds").
* **Defense test** (the Δ mark): the cell's per-seed values against the baseline's, two-sample
  permutation (default) or paired sign-flip over seeds (``report.seed_test``). A test that cannot
  reach the level with the seeds at hand is *not testable* (no mark; ``seeds_needed`` says how many it
  needs). The testable tests of the table form one family, adjusted with ``report.correction``
  (Benjamini–Hochberg by default); a Δ is marked when its adjusted p-value is below
  ``report.significance``.
* A defense whose every target was loaded from a checkpoint (a published model) is one trained model
  whatever the seeds: its Δs (and every Δ when it is the baseline) are not testable.
* **Identity-level test** (never a mark): the paired sign-flip test over the (seed, identity) pairs
  present in both cells. It asks whether these trained models differ on these identities.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from inversion_bench.leaderboard.model import Column, EvaluatorAudit, EvaluatorInfo, ReportSettings
from inversion_bench.leaderboard.number_format import plural
from inversion_bench.leaderboard.records import finite, is_ok
from inversion_bench.leaderboard.records import identity_values as record_identity_values
from inversion_bench.leaderboard.settings import table_settings
from inversion_bench.leaderboard.significance import (
    CORRECTIONS,
    SEED_TESTS,
    SIGN_FLIP_TEST,
    TWO_SAMPLE_TEST,
    adjust,
    choose_test,
    min_p_paired,
    min_p_two_sample,
    paired_permutation_test,
    seeds_needed,
    sign_flip_exact,
    sign_flip_test,
    two_sample_exact,
    two_sample_test,
)
from inversion_bench.leaderboard.stats import MIN_SEEDS_INTERVAL, crossed_interval, t_interval

IdentityValues = tuple[dict[str, float], int]
"""Per-identity values of one record: ``{identity id: value}`` and the number of 0-valued identities of
unknown id (see the module docstring)."""


def report_settings(recs: Sequence[dict[str, Any]], notes: list[str]) -> ReportSettings:
    """The records' ``report_settings`` (the first record's when they disagree, noted; defaults without)."""
    found: list[dict[str, Any]] = []
    for r in recs:
        s = r.get("report_settings")
        if isinstance(s, Mapping) and _with_table(s) not in map(_with_table, found):
            found.append(dict(s))
    if not found:
        return ReportSettings()
    if len(found) > 1:
        notes.append(f"records disagree on report_settings ({found}); using the first, {found[0]}.")
    default = ReportSettings()
    s = found[0]
    correction = str(s.get("correction", default.correction))
    seed_test = str(s.get("seed_test", default.seed_test))
    if correction not in CORRECTIONS or seed_test not in SEED_TESTS:
        notes.append(f"report_settings name an unknown correction or seed test ({correction!r}, {seed_test!r}); "
                     f"using {default.correction!r} and {default.seed_test!r}.")
        correction, seed_test = default.correction, default.seed_test
    return ReportSettings(significance=float(s.get("significance", default.significance)),
                          confidence=float(s.get("confidence", default.confidence)),
                          bootstrap=int(s.get("bootstrap", default.bootstrap)),
                          intervals=bool(s.get("intervals", default.intervals)),
                          correction=correction, seed_test=seed_test, table=table_settings(s.get("table"), notes))


def _with_table(s: Mapping[str, Any]) -> dict[str, Any]:
    """``report_settings`` with the paper table's default block where a record predates it, so that
    records written before and after ``report.table`` existed agree when their settings do."""
    return {"table": {"metrics": None, "attacks": None, "caption": "short"}, **s}


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
    """The per-identity values of ``metric`` in one record (current version: ``per_identity``) and how many
    identities of unknown id add 0s, or ``None``."""
    found = record_identity_values(dict(rec), metric)
    return (dict(found.values), found.unknown) if found is not None and found.values else None


def _matrix(per_identity: Mapping[int, IdentityValues]) -> tuple[np.ndarray, int]:
    """Seeds × identities of a cell (NaN where a seed lacks an identity; unknown ids as ``?0, ?1, ...``) and
    the largest number of identities on one seed."""
    rows = [{**known, **{f"?{k}": 0.0 for k in range(unknown)}} for known, unknown in per_identity.values()]
    ids = sorted({i for r in rows for i in r}, key=lambda k: (len(k), k))
    matrix = np.array([[r.get(i, math.nan) for i in ids] for r in rows], dtype=float)
    return matrix, max(len(r) for r in rows)


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
    nan = {"ci_low": math.nan, "ci_high": math.nan, "n_identities": 0}
    if not values:
        return {**nan, "ci_method": "no interval: no values"}
    if per_identity and len(per_identity) == len(values):  # every seed has per-identity values
        matrix, n_ids = _matrix(per_identity)
        low, high, nu = crossed_interval(matrix, settings.confidence, settings.bootstrap)
        if math.isnan(low):
            return {**nan, "ci_method": "no interval: one identity on one seed"}
        if col.is_share:  # a share: the symmetric t interval is clipped to [0, 1]
            low, high = max(low, 0.0), min(high, 1.0)
        ids = plural(n_ids, "identity", "identities")
        if len(per_identity) == 1:
            method = (f"bootstrap over the identities of one trained model, t (ν = {nu:.1f}), n = {ids}; "
                      "seed-to-seed variation not included")
        else:
            method = (f"crossed bootstrap over seeds and identities, t (ν = {nu:.1f}), "
                      f"n = {ids} × {plural(len(per_identity), 'seed')}")
        return {"ci_low": low, "ci_high": high, "ci_method": method, "n_identities": n_ids}
    if len(values) < MIN_SEEDS_INTERVAL:
        return {**nan, "ci_method": f"no interval: too few seeds ({len(values)}; {MIN_SEEDS_INTERVAL} needed)"}
    low, high = t_interval(values, settings.confidence)
    if col.is_share:
        low, high = max(low, 0.0), min(high, 1.0)
    return {"ci_low": low, "ci_high": high, "ci_method": f"t interval over seeds, n = {plural(len(values), 'seed')}",
            "n_identities": 0}


def identity_test(col: Column, mine: Mapping[int, IdentityValues], base: Mapping[int, IdentityValues],
                  settings: ReportSettings) -> tuple[float, str]:
    """(p-value, description) of the identity-level paired test of a defense's cell against the baseline's."""
    if not col.is_attack:
        return math.nan, ""
    if not mine or not base:
        return math.nan, "no identity-level test (no per-identity values)"
    a: list[float] = []
    b: list[float] = []
    for seed in sorted(set(mine) & set(base)):
        known_a, known_b = mine[seed][0], base[seed][0]
        for ident in sorted(set(known_a) & set(known_b), key=lambda k: (len(k), k)):
            a.append(known_a[ident])
            b.append(known_b[ident])
    if not a:
        return math.nan, "no identity-level test (no (seed, identity) pair in both)"
    nonzero = int(np.count_nonzero(np.asarray(a) - np.asarray(b)))
    p = paired_permutation_test(a, b, settings.bootstrap)
    kind = "exact" if sign_flip_exact(nonzero, settings.bootstrap) else f"Monte Carlo, {settings.bootstrap} draws"
    return p, (f"{SIGN_FLIP_TEST} over (seed, identity) pairs ({kind}; {plural(len(a), 'pair')}, {nonzero} non-zero): "
               "whether these trained models differ on these identities, not a test of the defense")


def defense_test(values: Sequence[float], seeds: Sequence[int], base_values: Sequence[float],
                 base_seeds: Sequence[int], settings: ReportSettings, level: float) -> dict[str, Any]:
    """``p_value, testable, seeds_needed, test`` of a defense's per-seed values against the baseline's.

    ``level`` is the level the test must be able to reach (the significance level; divided by the
    number of tests under Holm).
    """
    mine = dict(zip(seeds, values, strict=True))
    base = dict(zip(base_seeds, base_values, strict=True))
    kind = choose_test(settings.seed_test, list(mine), list(base))
    if kind == "paired":
        shared = sorted(set(mine) & set(base))
        d = [mine[s] - base[s] for s in shared]
        nonzero = int(np.count_nonzero(d))
        p = sign_flip_test(d, settings.bootstrap)
        min_p = min_p_paired(len(shared))  # testability depends on the seeds, not on tied differences
        exact = "exact" if sign_flip_exact(nonzero, settings.bootstrap) else f"Monte Carlo, {settings.bootstrap} draws"
        what = f"{SIGN_FLIP_TEST} over seeds ({exact}; {plural(len(shared), 'seed')}, {nonzero} non-zero)"
        n_seeds = len(shared)
    else:
        p = two_sample_test(list(mine.values()), list(base.values()), settings.bootstrap)
        min_p = min_p_two_sample(len(mine), len(base))
        exact = ("exact" if two_sample_exact(len(mine), len(base), settings.bootstrap)
                 else f"Monte Carlo, {settings.bootstrap} draws")
        what = f"{TWO_SAMPLE_TEST} over seeds ({exact}; {len(mine)} vs {len(base)} seeds)"
        n_seeds = min(len(mine), len(base))
    if min_p < level:
        return {"p_value": p, "testable": True, "seeds_needed": 0, "test": what}
    k = seeds_needed(kind, level)
    return {"p_value": p, "testable": False, "seeds_needed": k,
            "test": f"not testable with {plural(n_seeds, 'seed')}; {k} needed ({what})"}


def one_published_model(recs: Sequence[dict[str, Any]]) -> bool:
    """Whether every target of a defense's records was loaded from a checkpoint (``record["target"]["checkpoint"]``):
    then its seeds share one trained model and cannot replicate the defense."""
    blocks = [r.get("target") for r in recs]
    return bool(blocks) and all(isinstance(b, Mapping) and b.get("checkpoint") for b in blocks)


def _no_test(why: str) -> dict[str, Any]:
    return {"p_value": math.nan, "testable": False, "seeds_needed": 0, "test": why}


def add_uncertainty(data: pd.DataFrame, by_defense: Mapping[str, Sequence[dict[str, Any]]],
                    columns: Sequence[Column], baseline: str | None, settings: ReportSettings) -> pd.DataFrame:
    """``data`` with the interval and test columns filled (see the module docstring)."""
    cols = {c.key: c for c in columns}
    rows = {(r["defense"], r["column"]): r for _, r in data.iterrows()}
    per_id = {key: _per_identity(by_defense[key[0]], cols[key[1]], list(r["seeds"])) for key, r in rows.items()}
    n_tests = sum(1 for (d, c), r in rows.items() if baseline not in (None, d) and r["values"]
                  and (baseline, c) in rows and rows[(baseline, c)]["values"])
    level = settings.significance / max(n_tests, 1) if settings.correction == "holm" else settings.significance
    fixed = {d: one_published_model(recs) for d, recs in by_defense.items()}
    out: dict[str, list[Any]] = {k: [] for k in ("ci_low", "ci_high", "ci_method", "n_identities", "p_value",
                                                 "testable", "seeds_needed", "test", "p_identity", "test_identity")}
    for key, row in rows.items():
        col = cols[key[1]]
        ci = cell_interval(col, list(row["values"]), per_id[key], settings)
        base = rows.get((baseline, key[1])) if baseline is not None else None
        p_id, t_id = math.nan, ""
        if baseline is None or key[0] == baseline:
            test = _no_test("" if baseline is None else "baseline")
        elif not row["values"] or base is None or not base["values"]:
            test = _no_test("no test (no values)" if not row["values"] else "no test (the baseline has no values)")
        elif fixed[key[0]] or fixed[baseline]:
            test = _no_test(f"not testable: {'the baseline' if fixed[baseline] else 'this defense'} is one "
                            "published model (a checkpoint), the same on every seed, which varies only the attacks")
            p_id, t_id = identity_test(col, per_id[key], per_id[(baseline, key[1])], settings)
        else:
            test = defense_test(list(row["values"]), list(row["seeds"]), list(base["values"]), list(base["seeds"]),
                                settings, level)
            p_id, t_id = identity_test(col, per_id[key], per_id[(baseline, key[1])], settings)
        for k in ("ci_low", "ci_high", "ci_method", "n_identities"):
            out[k].append(ci[k])
        for k in ("p_value", "testable", "seeds_needed", "test"):
            out[k].append(test[k])
        out["p_identity"].append(p_id)
        out["test_identity"].append(t_id)
    data = data.copy()
    for k, v in out.items():
        data[k] = v
    family = [p if t else math.nan for p, t in zip(out["p_value"], out["testable"], strict=True)]
    data["p_adjusted"] = adjust(family, settings.correction)
    data["significant"] = [bool(t and not math.isnan(q) and q < settings.significance)
                           for t, q in zip(out["testable"], data["p_adjusted"], strict=True)]
    return data.astype({"n_identities": int, "significant": bool, "testable": bool, "seeds_needed": int})
