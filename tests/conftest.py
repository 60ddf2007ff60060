"""Shared fixtures: small suites that run in seconds on 2 CPU cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
ROOT = Path(__file__).resolve().parent.parent


class NaNOnGradTarget(torch.nn.Module):
    """A 6-class target whose logits turn NaN whenever gradients are on: an attack's optimisation
    diverges while its scoring without gradients stays finite."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lin(x.mean((2, 3)))
        return out * float("nan") if torch.is_grad_enabled() else out


def tiny_suite(**overrides) -> dict:
    """A suite small enough for end-to-end tests (a few seconds)."""
    suite = {
        "name": "tiny",
        "dataset": {"name": "synthetic-faces", "params": {"num_identities": 10, "images_per_identity": 12, "seed": 0},
                    "resolution": 16, "split": {"private_identities": 5, "public_identities": "rest",
                                                "test_fraction": 0.25, "seed": 1}},
        "target": {"architecture": {"name": "small-cnn", "params": {"width": 8}},
                   "training": {"epochs": 2, "batch_size": 16}},
        "evaluation": {"architecture": {"name": "small-resnet", "params": {"width": 8}},
                       "training": {"epochs": 2, "batch_size": 16}},
        "defenses": [
            {"id": "hard", "name": "label_smoothing", "params": {"alpha": 0.0}},
            {"id": "negls", "name": "label_smoothing", "params": {"alpha": -0.05}},
        ],
        "attacks": [{"id": "mif", "name": "mi-face", "params": {"steps": 3, "restarts": 2}}],
        "metrics": ["test_accuracy", "attack_accuracy", "knn_distance"],
        "seeds": [0],
        "run": {"device": "cpu", "progress": False},
    }
    for k, v in overrides.items():
        suite[k] = v
    return suite


def run_tiny(data: dict, folder: Path) -> Path:
    """Runs the suite ``data`` (with its report) into ``folder/runs`` on one torch thread, restoring the
    thread count afterwards; returns the run folder."""
    from inversion_bench.cli import main

    data = {**data, "run": {**data["run"], "output": str(folder / "runs"), "threads": 1}}
    suite = folder / "suite.yaml"
    suite.write_text(yaml.safe_dump(data, sort_keys=False))
    n = torch.get_num_threads()
    try:
        assert main(["run", str(suite), "--no-tracking"]) == 0
    finally:
        torch.set_num_threads(n)
    return folder / "runs" / data["name"]


@pytest.fixture(autouse=True)
def bench_cache(tmp_path_factory, monkeypatch) -> Path:
    """A cache folder of its own for every test (the fast path's stamps never leak between tests or
    into the user's ~/.cache)."""
    path = tmp_path_factory.mktemp("bench-cache")
    monkeypatch.setenv("INVERSION_BENCH_CACHE", str(path))
    return path


@pytest.fixture
def write_suite(tmp_path):
    def _write(data: dict, name: str = "suite.yaml") -> Path:
        data = dict(data)
        data.setdefault("run", {})
        data["run"] = {**data["run"], "output": str(tmp_path / "runs")}
        p = tmp_path / name
        p.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        return p

    return _write


DEFENSE_CLASSES = 6


@pytest.fixture
def one_thread():
    """Runs a test with one torch thread (much faster for tiny models on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def defense_splits():
    """6 private identities x 10 synthetic faces at 16 px, for training every defense quickly."""
    from inversion_bench.data.splits import SplitSpec, make_splits
    from inversion_bench.data.synthetic import SyntheticFaces

    coll = SyntheticFaces(SyntheticFaces.Params(num_identities=9, images_per_identity=10, seed=0)).load(16)
    return make_splits(coll, SplitSpec(private_identities=DEFENSE_CLASSES, public_identities="rest",
                                       test_fraction=0.3, seed=1))
