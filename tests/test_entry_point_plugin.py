"""A package installed into the environment registers a defense through ``bench.defenses``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_suite

FIXTURE = Path(__file__).parent / "fixtures" / "bench_plugin_example"


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(FIXTURE)], check=True)
    yield target


def _bench(args, site, cwd):
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-m", "inversion_bench.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def test_entry_point_defense_is_listed_and_runs(installed_plugin, write_suite, tmp_path):
    out = _bench(["list", "defenses"], installed_plugin, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "confidence-penalty" in out.stdout
    assert "entry point bench.defenses:confidence-penalty (bench-plugin-example 0.0.1)" in out.stdout

    data = tiny_suite(defenses=[
        {"id": "hard", "name": "label_smoothing", "params": {"alpha": 0.0}},
        {"id": "cp", "name": "confidence-penalty", "params": {"beta": 0.2}},
    ])
    suite = write_suite(data)
    out = _bench(["run", str(suite), "--no-tracking", "--no-progress"], installed_plugin, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    rec = json.loads((tmp_path / "runs" / "tiny" / "records" / "cp__mif__seed0.json").read_text())
    assert rec["status"] == "ok" and rec["defense_plugin"] == "confidence-penalty"
    assert 0.0 <= rec["metrics"]["test_accuracy"] <= 1.0
