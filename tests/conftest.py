"""Shared fixtures: small suites that run in seconds on 2 CPU cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
ROOT = Path(__file__).resolve().parent.parent

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist (``-n 2`` in pyproject's addopts): one torch thread per worker, and for the bench
    # processes the tests start, so that two workers use two cores instead of fighting over them
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        # each worker on a core of its own (gw0 on the first, gw1 on the next, ...): the runs a test starts
        # inherit it, so a suite with run.threads 1 runs in-process (run.workers defaults to the cores this
        # process may use) instead of spawning worker processes onto the other test worker's core
        _cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {_cores[int(os.environ["PYTEST_XDIST_WORKER"].lstrip("gw") or 0) % len(_cores)]})


# The longest tests (seconds, measured with -n 2 on a busy machine, 2026-12-07), started first so that
# no worker is left running one of them alone at the end (longest processing time first). Order only:
# a renamed test just loses its place.
RUN_FIRST = (
    "tests/test_paper_scaled.py::test_scaled_facescrub_runs_end_to_end",  # 680
    "tests/test_parallel_executor.py",  # 90 in all on one core (the module's runs, 2 worker processes each)
    "tests/test_runner.py::test_resume_after_sigkill_equals_uninterrupted",  # 274
    "tests/test_ray_executor.py",  # 220 in all, one worker (the module's Ray cluster)
    "tests/test_preflight.py::test_sigterm_releases_the_lock_and_the_rerun_resumes",  # 230
    "tests/test_entry_point_plugin.py::test_entry_point_defense_is_listed_and_runs",  # 226
    "tests/test_input_refusals.py::test_plugin_that_exits_at_import_is_named_and_the_others_work",  # 202
    "tests/test_run_lock_and_environment.py",  # 172 for its two concurrent runs, one worker (module fixtures)
    "tests/test_plugin_attack_example.py::test_example_attack_is_listed_runs_and_lands_on_the_leaderboard",  # 163
    "tests/test_plugin_example.py::test_example_plugin_is_listed_and_runs",  # 141
    "tests/test_packaging.py",  # 110
    "tests/test_checkpoint_suites.py::test_suite_runs_on_published_checkpoints",  # 102
    "tests/test_noop_rerun.py::test_light_commands_do_not_import_heavy_libraries",  # 90
    "tests/test_checkpoints.py",  # 400 in all over many short tests
)


def _first_rank(nodeid: str) -> int:
    return next((i for i, prefix in enumerate(RUN_FIRST) if nodeid.startswith(prefix)), len(RUN_FIRST))


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``--dist loadgroup``), the tests of a module that share a module- or class-scoped
    fixture (a trained model, a finished run, a Ray cluster) run on one worker, so the fixture is built once
    and its tests never race each other; a test that names its own ``xdist_group`` keeps it. The tests of
    :data:`RUN_FIRST` are moved to the front (``--no-loadscope-reorder`` keeps this order)."""
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        if any(d and d[-1].scope in ("module", "class", "package") for d in defs.values()):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    items.sort(key=lambda item: _first_rank(item.nodeid))  # stable: the rest keep their order


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
