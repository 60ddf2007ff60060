"""``run.store`` / ``--store``: one product store shared by several run folders, also concurrently."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import tiny_suite

from inversion_bench.config import validate_suite
from inversion_bench.registry import load_plugins
from inversion_bench.run_context import RunContext
from inversion_bench.store import Store, tmp_prefix, verify_checksums


def _products(store: Path) -> list[Path]:
    return [p for kind in store.iterdir() if kind.is_dir() and kind.name != "corrupt"
            for p in kind.iterdir() if not p.name.startswith(".")]


def test_run_store_default_and_shared(tmp_path, monkeypatch):
    load_plugins()
    monkeypatch.chdir(tmp_path)
    loaded = validate_suite(tiny_suite(), "t.yaml")
    assert RunContext(loaded, run_dir=tmp_path / "r").store.root == tmp_path / "r" / "store"
    loaded = validate_suite(tiny_suite(run={"device": "cpu", "store": "shared"}), "t.yaml")
    assert RunContext(loaded, run_dir=tmp_path / "r").store.root == tmp_path / "shared"  # relative to the cwd


def test_clean_partial_keeps_a_live_writers_temp_folder(tmp_path):
    store = Store(tmp_path / "store")
    live = tmp_path / "store" / "targets" / f"{tmp_prefix('abc')}x.tmp"
    live.mkdir(parents=True)
    old = time.time() - 10 * 24 * 3600
    os.utime(live, (old, old))
    assert store.clean_partial(max_age_s=0) == 0
    assert live.is_dir()


def test_two_runs_share_one_store_concurrently(tmp_path):
    """Two suites (different run folders and defenses, the same data and evaluation model) run at
    the same time on one store: both ok, every product once with a valid checksum, no temp folder left."""
    store = tmp_path / "shared-store"
    procs = []
    for name, defenses in [("left", [{"id": "hard", "name": "label_smoothing", "params": {"alpha": 0.0}}]),
                           ("right", [{"id": "hard", "name": "label_smoothing", "params": {"alpha": 0.0}},
                                      {"id": "ls", "name": "label_smoothing", "params": {"alpha": 0.1}}])]:
        suite = tiny_suite(name=name, defenses=defenses)
        suite["run"] = {**suite["run"], "output": str(tmp_path / "runs"), "threads": 1}
        yml = tmp_path / f"{name}.yaml"
        yml.write_text(json.dumps(suite))  # JSON is YAML
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "inversion_bench.cli", "run", str(yml), "--store", str(store), "--no-tracking",
             "--no-progress", "--no-figures"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out
    for name, n in [("left", 1), ("right", 2)]:
        run_dir = tmp_path / "runs" / name
        assert not (run_dir / "store").exists()
        records = [json.loads(r.read_text()) for r in (run_dir / "records").glob("*.json")]
        assert len(records) == n and all(r["status"] == "ok" for r in records), records
    products = _products(store)
    assert products
    for p in products:
        assert (p / "checksum.json").is_file(), p
        assert verify_checksums(p) is None, p
    assert not list(store.glob("*/.*.tmp")), "temp folders left behind"
    assert not (store / "corrupt").exists()
    assert len(list((store / "evaluators").iterdir())) == 1  # computed once for both suites
    keys = {p.parent.name + "/" + p.name for p in products}
    assert len(keys) == len(products)
    assert len(list((store / "targets").iterdir())) == 2  # `hard` seed 0 is the same target in both suites
