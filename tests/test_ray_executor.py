"""The Ray executor (``bench run --executor ray``): same records as in-process, retries, failures,
shared-storage safety of the store, and the error when Ray is missing.

The cluster is a local one (``ray.init(num_cpus=2)``) shared by the tests of this module; its
worker processes are reused from test to test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from inversion_bench.cli import main
from inversion_bench.jobs import Job, job_graph
from inversion_bench.plan import PairJob, Plan
from inversion_bench.store import Store, tmp_is_stale, tmp_prefix
from tests.conftest import tiny_suite

pytestmark = pytest.mark.slow

CRASH_PLUGIN = '''
"""A defense that kills its worker process in its first attempts (to test Ray's retries)."""
import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from inversion_bench.interfaces import Defense
from inversion_bench.registry import PluginParams, defenses


@defenses.register("ray-test-crash-worker")
class CrashWorker(Defense):
    """Appends its pid to ``marker``; while ``marker`` has <= ``crashes`` lines, kills its own process
    (``how: exit``) or raises (``how: raise``) instead of training."""

    class Params(PluginParams):
        marker: str = Field(description="file counting the training attempts")
        crashes: int = Field(1, ge=0, description="attempts that fail")
        how: Literal["exit", "raise"] = "exit"

    def fit(self, model, trainer):
        marker = Path(self.params.marker)
        with open(marker, "a") as fh:
            fh.write(f"{os.getpid()}\\n")
        attempt = len(marker.read_text().splitlines())
        if attempt <= self.params.crashes:
            if self.params.how == "exit":
                os._exit(1)
            raise RuntimeError(f"attempt {attempt} failed on purpose")
        return super().fit(model, trainer)


@defenses.register("ray-test-nan-loss")
class NanLoss(Defense):
    """A broken defense whose loss is NaN."""

    def criterion(self, logits, targets, progress):
        return logits.sum() * float("nan")
'''


def _records(run_dir: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((run_dir / "records").glob("*.json"))}


class MirrorLog:
    """A stand-in for the MLflow tracker that remembers which records it was asked to mirror."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def mirror(self, record, artifacts=(), trace=None) -> str:
        from inversion_bench.tracking import record_id

        self.ids.append(record_id(record))
        return "run-id"

    def mirrored(self) -> set[str]:
        return set(self.ids)


def _run(suite: Path, plugin: Path | None = None, tracker=None):
    """``bench run SUITE`` without the report (records only): the executor is the suite's run.executor."""
    from inversion_bench.config import load_suite
    from inversion_bench.executors import make_executor
    from inversion_bench.registry import load_plugin_file, load_plugins
    from inversion_bench.runner import Runner

    load_plugins()
    if plugin is not None:
        load_plugin_file(plugin)
    loaded = load_suite(suite)
    return Runner(loaded).run(tracker, executor=make_executor(loaded.suite.run))


def _suite(name: str, **run) -> dict:
    """The tiny suite with one torch thread everywhere (results must not depend on the executor)."""
    data = tiny_suite(name=name)
    data["run"] = {**data["run"], "threads": 1, **run}
    return data


@pytest.fixture(scope="module")
def crash_plugin(tmp_path_factory) -> Path:
    """One plugin file for the module: a plugin name may be registered once per process (names unique
    to this module, as other test modules register their own test plugins in the same process)."""
    path = tmp_path_factory.mktemp("plugins") / "crash_plugin.py"
    path.write_text(CRASH_PLUGIN)
    return path


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


# ------------------------------------------------------------------------------------------ no Ray
def test_missing_ray_says_how_to_install_and_exits_2(write_suite, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    suite = write_suite(_suite("noray"))
    assert main(["run", str(suite), "--executor", "ray", "--no-tracking"]) == 2
    err = capsys.readouterr().err
    assert 'pip install -e ".[ray]"' in err and "--executor ray" in err
    assert not (tmp_path / "runs" / "noray").exists()  # nothing ran


def test_remote_output_url_is_refused_naming_the_field(write_suite, capsys):
    suite = write_suite(_suite("url"))
    assert main(["run", str(suite), "--set", "run.output=s3://bucket/runs", "--no-tracking"]) == 2
    err = capsys.readouterr().err
    assert "run.output" in err and "s3://bucket/runs" in err and "mount" in err


def test_ray_settings_are_validated(write_suite, capsys):
    suite = write_suite(_suite("bad", executor="ray", device="cuda", ray={"memory": "2GB"}))
    assert main(["validate", "--schema-only", str(suite)]) == 2
    assert "run.ray.num_gpus" in capsys.readouterr().err
    suite = write_suite(_suite("bad", ray={"max_retries": -1}))
    assert main(["validate", "--schema-only", str(suite)]) == 2
    assert "run.ray.max_retries: must be >= 0" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ job graph
def _pair(di: int, ai: int, seed: int) -> PairJob:
    """Pair of defense ``d<di>`` and attack ``a<ai>``; attack ``a1`` reads the image prior."""
    return PairJob(f"d{di}", f"a{ai}", seed, f"t{di}{seed}", f"k{di}{ai}{seed}", "h", f"d{di}__a{ai}__s{seed}",
                   prior_key="prior" if ai == 1 else None)


def test_job_graph_dependencies():
    pairs = [_pair(d, a, s) for d in range(2) for a in range(2) for s in (0, 1)]
    plan = Plan("data", "ev", "prior", {(f"d{d}", s): f"t{d}{s}" for d in range(2) for s in (0, 1)}, pairs, "hash")
    jobs = job_graph(plan, pairs)
    by_id = {j.id: j for j in jobs}
    kinds = [j.kind for j in jobs]
    assert kinds.count("target") == 4 and kinds.count("attack") == 8 and kinds.count("pair") == 8
    for i, job in enumerate(jobs):  # every job after what it depends on
        assert all(d in {j.id for j in jobs[:i]} for d in job.deps)
    # attacks need their target (and the prior), not the evaluation model; scoring needs both
    assert by_id["attack:d1__a0__s1"].deps == ("target:d1:1",)
    assert by_id["attack:d1__a1__s1"].deps == ("target:d1:1", "prior")
    assert by_id["pair:d1__a1__s1"].deps == ("attack:d1__a1__s1", "evaluator")
    assert by_id["evaluator"].deps == () and by_id["target:d0:1"].deps == ()
    # no prior job when no pending pair needs it; only the targets of pending pairs
    jobs = job_graph(plan, [p for p in pairs if p.attack == "a0" and p.defense == "d1"])
    assert {j.id for j in jobs} == {"evaluator", "target:d1:0", "target:d1:1", "attack:d1__a0__s0", "attack:d1__a0__s1",
                                    "pair:d1__a0__s0", "pair:d1__a0__s1"}
    assert job_graph(plan, []) == []
    assert Job("evaluator", "evaluator") == Job("evaluator", "evaluator")


# ------------------------------------------------------------------------------------------ store
def test_concurrent_writers_of_one_product_leave_one_complete_folder(tmp_path):
    store = Store(tmp_path / "store")
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            with store.writing("targets", "samekey") as tmp:
                (tmp / "a.txt").write_text(str(i))
                barrier.wait()  # all four have written half their product before any renames
                (tmp / "b.txt").write_text(str(i))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    final = store.path("targets", "samekey")
    assert (final / "a.txt").read_text() == (final / "b.txt").read_text()  # one writer's product, whole
    assert sorted(p.name for p in final.iterdir()) == ["a.txt", "b.txt", "checksum.json"]
    assert not list((tmp_path / "store" / "targets").glob(".*.tmp"))


def test_clean_partial_keeps_folders_of_live_writers(tmp_path):
    store = Store(tmp_path / "store")
    kind = tmp_path / "store" / "attacks"
    kind.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live_dir = kind / f"{tmp_prefix('k1')}abc.tmp"
    dead_dir = kind / f"{tmp_prefix('k2')}abc.tmp".replace(f".{os.getpid()}.", f".{dead.pid}.")
    fresh_unknown = kind / ".k3.xyz.tmp"
    old_unknown = kind / ".k4.xyz.tmp"
    for d in (live_dir, dead_dir, fresh_unknown, old_unknown):
        d.mkdir()
    os.utime(old_unknown, (time.time() - 7200, time.time() - 7200))
    assert store.clean_partial() == 2
    assert live_dir.is_dir() and fresh_unknown.is_dir()
    assert not dead_dir.exists() and not old_unknown.exists()
    # another host's folder: only by age
    assert not tmp_is_stale(".k.otherhost.1.abc.tmp", "thishost", 10.0, 3600.0, lambda pid: False)
    assert tmp_is_stale(".k.otherhost.1.abc.tmp", "thishost", 4000.0, 3600.0, lambda pid: True)


# ------------------------------------------------------------------------------------------ on Ray
def _with_prior(data: dict) -> dict:
    """Adds a tiny DCGAN prior and GMI (an attack that needs it): every kind of job runs."""
    data["prior"] = {"name": "dcgan", "params": {"steps": 5, "batch_size": 16, "g_width": 8, "d_width": 8}}
    data["attacks"] = [*data["attacks"],
                       {"id": "gmi", "name": "gmi", "params": {"num_steps": 3, "num_restarts": 1,
                                                                "samples_per_target": 1}}]
    return data


def test_ray_records_equal_local_records(ray_cluster, write_suite, tmp_path, one_thread):
    names = sorted(f"{d}__{a}__seed0.json" for d in ("hard", "negls") for a in ("mif", "gmi"))
    assert _run(write_suite(_with_prior(_suite("local")), "local.yaml")).exit_code == 0
    tracker = MirrorLog()
    remote = write_suite(_with_prior(_suite("remote", executor="ray")), "remote.yaml")
    summary = _run(remote, tracker=tracker)
    assert summary.exit_code == 0 and sorted(summary.ok) == names
    assert (tmp_path / "runs" / "remote" / "figures" / "prior_dcgan_samples.png").is_file()  # written by a worker
    recs_local, recs_ray = _records(tmp_path / "runs" / "local"), _records(tmp_path / "runs" / "remote")
    assert sorted(recs_local) == sorted(recs_ray) == names
    for name, r in recs_ray.items():
        assert r["status"] == "ok"
        assert r["metrics"] == pytest.approx(recs_local[name]["metrics"], rel=1e-6, abs=1e-9), name
        assert r["keys"] == recs_local[name]["keys"] and r["config_hash"] == recs_local[name]["config_hash"]
    # the driver mirrored each record once, as it arrived
    from inversion_bench.tracking import record_id

    assert sorted(tracker.ids) == sorted(record_id(r) for r in recs_ray.values())

    # a rerun comes from the records: no task runs, records untouched
    before = {k: v["created"] for k, v in recs_ray.items()}
    again = _run(remote, tracker=tracker)
    assert again.exit_code == 0 and len(again.skipped) == 4 and not again.ok
    assert {k: v["created"] for k, v in _records(tmp_path / "runs" / "remote").items()} == before
    assert len(tracker.ids) == 4


def test_killed_worker_is_retried_and_the_suite_completes(ray_cluster, crash_plugin, write_suite, tmp_path):
    marker = tmp_path / "attempts.txt"
    data = _suite("retry", ray={"max_retries": 2})
    data["defenses"][1] = {"id": "crashy", "name": "ray-test-crash-worker",
                           "params": {"marker": str(marker), "crashes": 1}}
    suite = write_suite(data)
    assert main(["run", str(suite), "--executor", "ray", "--no-tracking", "--plugin", str(crash_plugin)]) == 0
    attempts = marker.read_text().split()
    assert len(attempts) == 2 and attempts[0] != attempts[1]  # killed once, then rerun in a new worker process
    recs = _records(tmp_path / "runs" / "retry")
    assert sorted(recs) == ["crashy__mif__seed0.json", "hard__mif__seed0.json"]
    assert all(r["status"] == "ok" for r in recs.values())


def test_failures_after_retries_are_recorded_and_others_still_run(ray_cluster, crash_plugin, write_suite, tmp_path):
    marker = tmp_path / "attempts.txt"
    data = _suite("fails", executor="ray", ray={"max_retries": 1, "retry_exceptions": True})
    data["defenses"] = [
        {"id": "hard", "name": "label_smoothing", "params": {"alpha": 0.0}},
        {"id": "flaky", "name": "ray-test-crash-worker",
         "params": {"marker": str(marker), "crashes": 99, "how": "raise"}},
        {"id": "broken", "name": "ray-test-nan-loss"},
    ]
    summary = _run(write_suite(data), crash_plugin)
    assert summary.exit_code == 1 and summary.ok == ["hard__mif__seed0.json"] and len(summary.failed) == 2
    assert len(marker.read_text().split()) == 2  # the first attempt + max_retries = 1
    recs = _records(tmp_path / "runs" / "fails")
    assert recs["hard__mif__seed0.json"]["status"] == "ok"
    flaky = recs["flaky__mif__seed0.json"]
    assert flaky["status"] == "failed" and flaky["error"] == "RuntimeError: attempt 2 failed on purpose"
    assert "Traceback" in flaky["traceback"] and flaky["metrics"] == {}
    broken = recs["broken__mif__seed0.json"]  # the same record as the in-process executor writes
    assert broken["status"] == "failed"
    assert broken["error"].startswith("DivergedError: target broken seed 0: training diverged at epoch 1")
    assert "Traceback" in broken["traceback"] and broken["config_hash"] and broken["timings"] == {}


# ------------------------------------------------------------------------------------------ MLflow server
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """An `mlflow server` on the loopback interface (stopped after the test; start bounded to 90 s)."""
    import subprocess
    import sys
    import time
    import urllib.request

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", (tmp_path / "server-artifacts").as_uri(), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start (exit code {proc.poll()})")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_ray_run_logs_to_tracking_server(ray_cluster, mlflow_server, write_suite, tmp_path):
    """With a tracking server, every record becomes one run there; no SQLite file in the run folder."""
    from mlflow.tracking import MlflowClient

    suite = write_suite(_suite("served"))
    assert main(["run", str(suite), "--executor", "ray", "--tracking-uri", mlflow_server, "--no-figures"]) == 0
    run_dir = tmp_path / "runs" / "served"
    recs = _records(run_dir)
    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("served")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == len(recs) == 2
    by_defense = {r.data.tags["defense"]: r for r in runs}
    for rec in recs.values():
        logged = by_defense[rec["defense"]].data.metrics
        assert logged["attack_acc_top1"] == pytest.approx(rec["metrics"]["attack_acc@1"])
    assert not (run_dir / "mlflow.db").exists()
    assert list((tmp_path / "server-artifacts").rglob("grid.png"))  # artifacts went to the server
