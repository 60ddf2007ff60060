"""End-to-end runs of a tiny suite: records, leaderboard, MLflow, cache, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from inversion_bench.cli import main
from tests.conftest import tiny_suite

pytestmark = pytest.mark.slow


def _records(run_dir: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((run_dir / "records").glob("*.json"))}


def test_run_writes_records_leaderboard_and_mlflow(write_suite, tmp_path, capsys):
    suite = write_suite(tiny_suite(seeds=[0, 1]))
    assert main(["run", str(suite)]) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "runs" / "tiny"
    recs = _records(run_dir)
    assert sorted(recs) == sorted(f"{d}__mif__seed{s}.json" for d in ("hard", "negls") for s in (0, 1))
    for r in recs.values():
        assert r["status"] == "ok"
        assert set(r["metrics"]) >= {"test_accuracy", "attack_acc@1", "attack_acc@5", "knn_distance"}
        assert r["directions"]["attack_acc@1"] == "lower" and r["directions"]["test_accuracy"] == "higher"
        assert r["config_hash"] and r["code_version"] and r["timings"]["attack_s"] >= 0
        assert r["defense_params"]["alpha"] in (0.0, -0.05)
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.tex"):
        assert (run_dir / "leaderboard" / name).is_file()
    assert "| Defense" not in out and "pairs: 4 ran, 0 reused (recorded before), 0 failed" in out  # a summary
    assert f"tables: {run_dir / 'leaderboard' / 'leaderboard.md'}" in out

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{run_dir / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tiny"])
    assert len(runs) == len(recs)
    assert set(runs["tags.defense"]) == {"hard", "negls"}
    assert "metrics.attack_acc_top1" in runs.columns
    arts = list((run_dir / "mlartifacts").rglob("grid.png"))
    assert len(arts) == len(recs)

    # a second run comes from the cache: nothing retrained, records untouched
    before = {k: v["created"] for k, v in recs.items()}
    t0 = time.perf_counter()
    assert main(["run", str(suite)]) == 0
    assert time.perf_counter() - t0 < 30
    assert {k: v["created"] for k, v in _records(run_dir).items()} == before
    assert len(mlflow.search_runs(experiment_names=["tiny"])) == len(recs)

    # the leaderboard is rebuilt from the records alone
    csv_before = (run_dir / "leaderboard" / "leaderboard.csv").read_text()
    (run_dir / "leaderboard" / "leaderboard.csv").unlink()
    assert main(["leaderboard", str(run_dir)]) == 0
    assert (run_dir / "leaderboard" / "leaderboard.csv").read_text() == csv_before


def test_failed_pair_is_recorded_and_others_run(write_suite, tmp_path, capsys):
    plugin = tmp_path / "nan_defense.py"
    plugin.write_text(
        "from inversion_bench.interfaces import Defense\n"
        "from inversion_bench.registry import defenses\n"
        "@defenses.register('nan-loss')\n"
        "class NanLoss(Defense):\n"
        "    'A broken defense whose loss is NaN.'\n"
        "    def criterion(self, logits, targets, progress):\n"
        "        return logits.sum() * float('nan')\n"
    )
    data = tiny_suite()
    data["defenses"][1] = {"id": "broken", "name": "nan-loss"}
    suite = write_suite(data)
    code = main(["run", str(suite), "--no-tracking", "--plugin", str(plugin)])
    assert code == 1
    recs = _records(tmp_path / "runs" / "tiny")
    assert recs["hard__mif__seed0.json"]["status"] == "ok"
    bad = recs["broken__mif__seed0.json"]
    assert bad["status"] == "failed"
    assert bad["error"].startswith("DivergedError: target broken seed 0: training diverged at epoch 1")
    assert "Traceback" in bad["traceback"]
    md = (tmp_path / "runs" / "tiny" / "leaderboard" / "leaderboard.md").read_text()
    assert "| broken" in md and "failed" in md
    assert "training diverged" in md  # listed under Failures, never as a row of perfect privacy


def _bench_subprocess(suite: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "inversion_bench.cli", "run", str(suite), "--no-progress"],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def test_resume_after_sigkill_equals_uninterrupted(write_suite, tmp_path):
    data = tiny_suite(seeds=[0, 1])
    data["attacks"] = [{"id": "mif", "name": "mi-face", "params": {"steps": 40, "restarts": 2}}]
    killed = write_suite({**data, "name": "killed"}, "killed.yaml")
    clean = write_suite({**data, "name": "clean"}, "clean.yaml")
    run_killed = tmp_path / "runs" / "killed"

    proc = _bench_subprocess(killed, tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline and not list((run_killed / "records").glob("*.json")):
        time.sleep(0.2)
    assert list((run_killed / "records").glob("*.json")), "no record appeared"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(list((run_killed / "records").glob("*.json")))
    assert 1 <= n_before < 4

    # both finishing runs in fresh processes, as a user would (no state from other tests)
    for suite_file in (killed, clean):
        done = _bench_subprocess(suite_file, tmp_path)
        log = done.communicate(timeout=600)[0].decode()
        assert done.returncode == 0, log
    recs_killed = _records(run_killed)
    recs_clean = _records(tmp_path / "runs" / "clean")
    assert sorted(recs_killed) == sorted(recs_clean) and len(recs_killed) == 4
    for name, r in recs_killed.items():
        assert r["metrics"] == pytest.approx(recs_clean[name]["metrics"], rel=1e-6, abs=1e-9), name
    lb_k = pd.read_csv(run_killed / "leaderboard" / "leaderboard.csv")
    lb_c = pd.read_csv(tmp_path / "runs" / "clean" / "leaderboard" / "leaderboard.csv")
    pd.testing.assert_frame_equal(lb_k, lb_c)

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{run_killed / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["killed"])
    assert len(runs) == 4 and runs["tags.bench.record_id"].nunique() == 4
