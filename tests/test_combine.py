"""Combining run folders of different suites, choosing the baseline, and changing it without recomputation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from inversion_bench.cli import main
from tests.conftest import tiny_suite


def _suite(tmp: Path, name: str, defenses: list[dict], baseline: str | None = None) -> Path:
    data = tiny_suite(name=name, defenses=defenses)
    if baseline:
        data["baseline"] = baseline
    data["run"] = {**data["run"], "output": str(tmp / "runs"), "threads": 1}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


HARD = {"id": "hard", "name": "label_smoothing", "params": {"alpha": 0.0}}
NEGLS = {"id": "negls", "name": "label_smoothing", "params": {"alpha": -0.05}}
LS = {"id": "ls", "name": "label_smoothing", "params": {"alpha": 0.1}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Two run folders of different suites sharing the identical `hard` pair (suite B names ls its baseline)."""
    tmp = tmp_path_factory.mktemp("combine")
    n = torch.get_num_threads()
    try:
        a = _suite(tmp, "suite_a", [HARD, NEGLS])
        b = _suite(tmp, "suite_b", [HARD, LS], baseline="ls")
        for s in (a, b):
            assert main(["run", str(s), "--no-tracking", "--no-figures"]) == 0
    finally:
        torch.set_num_threads(n)
    return tmp, tmp / "runs" / "suite_a", tmp / "runs" / "suite_b"


def _hard_record(run_dir: Path) -> dict:
    return json.loads((run_dir / "records" / "hard__mif__seed0.json").read_text())


def test_folders_of_different_suites_with_the_same_pair_combine(runs, capsys) -> None:
    tmp, a, b = runs
    assert _hard_record(a)["config_hash"] == _hard_record(b)["config_hash"]
    assert _hard_record(a)["suite_hash"] != _hard_record(b)["suite_hash"]
    out = tmp / "combined"
    assert main(["report", str(a), str(b), "--no-figures", "--output", str(out)]) == 0
    md = (out / "leaderboard.md").read_text()
    for label in ("hard", "negls", "ls"):
        assert f"| {label}" in md
    assert "baseline hard (from suite.json of" in md  # the first folder's suite names the baseline
    assert "hard (baseline)" in md


def test_baseline_flag(runs) -> None:
    tmp, a, b = runs
    out = tmp / "flag"
    assert main(["leaderboard", str(a), str(b), "--output", str(out), "--baseline", "ls"]) == 0
    md = (out / "leaderboard.md").read_text()
    assert "ls (baseline)" in md and "(from --baseline)" in md
    assert "baseline" in (out / "index.html").read_text()
    assert main(["leaderboard", str(a), str(b), "--output", str(out), "--baseline", "nope"]) == 2


def test_genuinely_different_result_is_refused(runs, capsys) -> None:
    tmp, a, b = runs
    other = tmp / "changed"
    (other / "records").mkdir(parents=True)
    (other / "suite.json").write_text((b / "suite.json").read_text())
    rec = _hard_record(b)
    rec.update(config_hash="changed", keys={**rec["keys"], "prior": "another-prior"})
    (other / "records" / "hard__mif__seed0.json").write_text(json.dumps(rec))
    assert main(["leaderboard", str(a), str(other), "--output", str(tmp / "x")]) == 2
    err = capsys.readouterr().err
    assert "keys.prior" in err and str(other) in err and str(a) in err


def _products(run_dir: Path) -> set[str]:
    store = run_dir / "store"
    return {str(p.relative_to(store)) for p in store.glob("*/*") if p.is_dir()}


def test_changing_the_baseline_recomputes_nothing(runs, caplog) -> None:
    tmp, a, _ = runs
    before = _products(a)
    records = {p.name: p.stat().st_mtime_ns for p in (a / "records").glob("*.json")}
    suite = _suite(tmp, "suite_a", [HARD, NEGLS], baseline="negls")
    caplog.set_level("INFO")
    assert main(["run", str(suite), "--no-tracking", "--no-figures"]) == 0
    assert _products(a) == before  # no new store product
    assert {p.name: p.stat().st_mtime_ns for p in (a / "records").glob("*.json")} == records
    assert not any("epoch" in r.getMessage().lower() for r in caplog.records)  # no training log
    assert "0 pair(s) to run" in caplog.text
    md = (a / "leaderboard" / "leaderboard.md").read_text()
    assert "negls (baseline)" in md
