"""Tests of the leaderboard's reading of records: run folders combined, duplicates of one pair, records
from other suite versions refused, the baseline chosen for the table, no records at all."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from inversion_bench.leaderboard import build, build_from_dirs
from inversion_bench.results import write_record
from tests.test_leaderboard import ATTACKS, DEFENSES, make_record, synthetic_records


@pytest.fixture()
def records() -> list[dict[str, Any]]:
    return synthetic_records()


def test_build_from_dirs(tmp_path: Path, records: list[dict[str, Any]]) -> None:
    run_a, run_b = tmp_path / "run_a", tmp_path / "run_b"
    for r in records:  # split by attack: each run holds one attack
        write_record((run_a if r["attack"] == "gmi" else run_b) / "records", r)
    combined = build_from_dirs([run_a, run_b])
    direct = build(records)
    pd.testing.assert_frame_equal(combined.wide(), direct.wide())
    assert combined.to_markdown().split("\n", 3)[3] == direct.to_markdown().split("\n", 3)[3]

    # the same (defense, attack, seed) from a different suite version: refused, naming both files
    run_c = tmp_path / "run_c"
    other = copy.deepcopy(next(r for r in records if r["attack"] == "gmi" and r["status"] == "ok"))
    other["suite_hash"] = "hash2"
    write_record(run_c / "records", other)
    with pytest.raises(ValueError, match="different results") as exc:
        build_from_dirs([run_a, run_c])
    assert str(run_a) in str(exc.value) and str(run_c) in str(exc.value)


def test_same_config_hash_is_one_result_other_settings_refused(tmp_path: Path, records: list[dict[str, Any]]) -> None:
    """Records of one pair from two suites (different suite_hash) with the same config_hash are one result;
    a genuinely different one is refused, naming both files and the differing setting."""
    ok = [copy.deepcopy(r) for r in records]
    for r in ok:
        r["config_hash"] = f"cfg-{r['defense']}-{r['attack']}-{r['seed']}"
        r["attack_params"] = {"steps": 100}
        r["keys"] = {"evaluator": "ev", "prior": "prior"}
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    for r in ok:
        write_record(run_a / "records", r)
    same = copy.deepcopy(next(r for r in ok if r["attack"] == "gmi" and r["status"] == "ok"))
    same.update(suite_hash="another-suite", suite="other", baseline="mid_reg")
    write_record(run_b / "records", same)
    combined = build_from_dirs([run_a, run_b])
    pd.testing.assert_frame_equal(combined.wide(), build(ok).wide())
    changed = copy.deepcopy(same)  # same attack and defense configuration, another evaluation model
    changed.update(config_hash="cfg-other", keys={**(changed.get("keys") or {}), "evaluator": "ev-other"})
    write_record(run_b / "records", changed)
    with pytest.raises(ValueError, match=r"keys\.evaluator differs") as exc:
        build_from_dirs([run_a, run_b])
    assert str(run_a) in str(exc.value) and str(run_b) in str(exc.value)


def test_baseline_is_chosen_for_the_table(records: list[dict[str, Any]]) -> None:
    """Records naming different baselines are no error; an explicit baseline wins and is in the provenance."""
    mixed = [copy.deepcopy(r) for r in records]
    mixed[0]["baseline"] = "mid_reg"
    lb = build(mixed)
    assert lb.baseline is not None and any("different baselines" in n for n in lb.notes)
    lb = build(records, baseline="mid_reg", baseline_source="--baseline")
    assert lb.baseline == "mid_reg" and "(from --baseline)" in lb.to_markdown()
    assert lb.cell("mid_reg", "test_accuracy")["delta"] != lb.cell("mid_reg", "test_accuracy")["delta"]  # NaN
    with pytest.raises(ValueError, match="--baseline 'nope' is not a defense"):
        build(records, baseline="nope", baseline_source="--baseline")


def test_duplicate_same_version_prefers_ok(records: list[dict[str, Any]]) -> None:
    rerun = make_record(DEFENSES[1], ATTACKS[0], 1, {"test_accuracy": 0.8, "attack_acc@1": 0.5})
    lb = build([*records, rerun])
    assert lb.cell("mid_reg", "gmi/attack_acc@1")["n"] == 3
    assert lb.failures == []


def test_no_records() -> None:
    with pytest.raises(ValueError):
        build([])
