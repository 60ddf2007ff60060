"""examples/plugin-defense installs as a package and its defense runs in a suite through the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import tiny_suite
from tests.example_plugins import bench_with, imported_example, install_example


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    return install_example(tmp_path_factory, "plugin-defense")


def _bench(args, site, cwd):
    return bench_with(args, site, cwd)


def test_noisy_logits_function():
    from inversion_bench.registry import defenses

    with imported_example(defenses, "plugin-defense", "bench_example_defense"):  # registration undone after
        from bench_example_defense.defense import noisy_logits
    logits = torch.zeros(2000, 3)
    out = noisy_logits(logits, 2.0, generator=torch.Generator().manual_seed(0))
    assert float(out.std()) == pytest.approx(2.0, rel=0.05) and abs(float(out.mean())) < 0.1
    assert noisy_logits(logits, 0.0) is logits


def test_example_plugin_is_listed_and_runs(installed_example, write_suite, tmp_path):
    out = _bench(["list", "defenses"], installed_example, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "gaussian-logit-noise" in out.stdout
    assert "entry point bench.defenses:gaussian-logit-noise (bench-example-defense 0.1.0)" in out.stdout

    data = tiny_suite(defenses=[  # one pair keeps the test short; tests/test_entry_point_plugin.py runs two
        {"id": "noise", "name": "gaussian-logit-noise", "params": {"std": 2.0}, "label": "Logit noise"},
    ], metrics=["test_accuracy", "attack_accuracy"])
    suite = write_suite(data)
    out = _bench(["run", str(suite), "--no-tracking", "--no-progress"], installed_example, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    rec = json.loads((tmp_path / "runs" / "tiny" / "records" / "noise__mif__seed0.json").read_text())
    assert rec["status"] == "ok" and rec["defense_plugin"] == "gaussian-logit-noise"
    assert rec["defense_params"] == {"std": 2.0}
    assert rec["target"]["logit_noise_std"] == 2.0
    assert 0.0 <= rec["metrics"]["test_accuracy"] <= 1.0
