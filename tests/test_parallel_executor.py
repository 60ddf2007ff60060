"""The local executor with worker processes (run.workers, --workers): how many workers and threads,
the bookkeeping of the driver (with a fake pool), and end to end: a 2-worker run writes the records
of a 1-worker run, a failed job fails only its dependents, and a run whose driver is killed leaves
no worker behind and resumes to the records of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from inversion_bench import executors
from inversion_bench.config import RunConfig
from inversion_bench.errors import DiskFullError
from inversion_bench.executors import local, local_workers, parallel
from inversion_bench.executors.worker import run_local_job
from inversion_bench.jobs import job_graph
from tests.conftest import tiny_suite
from tests.test_local_executor import _Ctx, _pair, _plan

# ---- how many workers, how many threads -----------------------------------------------------------


@pytest.mark.parametrize(("fields", "on_cpu", "expected"), [
    ({}, True, (1, None)),  # run.threads unset: torch uses every core for one job, as before
    ({"threads": 1}, True, (8, 1)),
    ({"threads": 3}, True, (2, 3)),
    ({"threads": 16}, True, (1, None)),
    ({"workers": 4}, True, (4, 2)),  # the cores shared out
    ({"workers": 3, "threads": 1}, True, (3, 1)),
    ({"workers": 16}, True, (16, 1)),
    ({"workers": 1, "threads": 1}, True, (1, None)),
    ({"threads": 1}, False, (1, None)),  # a GPU: one process unless run.workers says otherwise
    ({"workers": 2, "threads": 1}, False, (2, 1)),
])
def test_workers_and_threads_per_job(fields, on_cpu, expected):
    assert local_workers(RunConfig(**fields), cpus=8, on_cpu=on_cpu) == expected


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="workers"):
        RunConfig(workers=0)


def test_a_plugin_registered_in_this_process_keeps_the_run_here(monkeypatch):
    from inversion_bench.errors import ConfigError
    from inversion_bench.executors import make_executor
    from inversion_bench.executors.local import LocalExecutor
    from inversion_bench.registry import defenses, load_plugins

    load_plugins()  # into the registry itself: loaded into the copy below, the built-ins would vanish with it
    monkeypatch.setattr(defenses, "_entries", dict(defenses._entries))  # the registration is undone after
    defenses.add("made-here", type("MadeHere", (), {}), origin="module __main__")
    assert "defense made-here (module __main__)" in executors.unshareable_plugins()
    assert isinstance(make_executor(RunConfig(device="cpu", threads=1)), LocalExecutor)  # the default: in-process
    with pytest.raises(ConfigError, match=r"run.workers 2 \(--workers\): worker processes cannot load the plugin"
                                          r"\(s\) defense made-here \(module __main__\)"):
        make_executor(RunConfig(device="cpu", workers=2))


def test_walk_order_is_the_in_process_order():
    pairs = [_pair(0, 0, 0), _pair(0, 1, 0), _pair(1, 0, 0)]
    assert parallel.walk_order(job_graph(_plan(pairs), pairs)) == [
        "target:d0:0", "attack:d0__a0__seed0.json", "evaluator", "pair:d0__a0__seed0.json",
        "prior", "attack:d0__a1__seed0.json", "pair:d0__a1__seed0.json",
        "target:d1:0", "attack:d1__a0__seed0.json", "pair:d1__a0__seed0.json",
    ]


def test_priority_order_is_the_critical_path_first():
    pairs = [_pair(0, 0, 0), _pair(0, 1, 0), _pair(1, 0, 0), _pair(1, 1, 0)]  # a1 reads the prior
    jobs = job_graph(_plan(pairs), pairs)
    order = parallel.priority_order(jobs)
    assert sorted(order) == sorted(j.id for j in jobs)
    # pairs whenever one is ready (a second of scoring, and the record comes at once); then the prior, with
    # prior (55) + attack (10) + pair (0.3) behind it, the evaluation model 45 + 0.3, a target 30 + 10 + 0.3:
    # the shared products first, then the targets in suite order, then their attacks
    assert order[:4] == [f"pair:{p.record_name}" for p in pairs]
    assert order[4:8] == ["prior", "evaluator", "target:d0:0", "target:d1:0"]
    assert order[8:] == ["attack:d0__a0__seed0.json", "attack:d0__a1__seed0.json",
                         "attack:d1__a0__seed0.json", "attack:d1__a1__seed0.json"]


def test_priority_order_weighs_the_chain_not_the_job():
    # one target whose attack needs a generator of its own: target + generator + attack + pair (70.3)
    # outweighs the prior's chain (65.3), so that target trains first
    from dataclasses import replace

    pairs = [_pair(0, 1, 0), replace(_pair(1, 0, 0), gan_key="g1")]
    order = parallel.priority_order(job_graph(_plan(pairs), pairs))
    assert order[2:5] == ["target:d1:0", "prior", "evaluator"]  # after the two pairs
    assert order.index("generator:g1") < order.index("attack:d0__a1__seed0.json")  # 40.3 against 10.3


def test_workers_started_early_end_when_the_run_stops_before_its_jobs(tmp_path, monkeypatch, capsys):
    """The workers start while the driver prepares the run (executor.start); a run refused after that (here:
    its folder is locked by another run) ends them: exit 2, no worker process left."""
    import multiprocessing

    from inversion_bench.cli import main
    from inversion_bench.lock import RunLock

    starts = []
    monkeypatch.setattr(parallel.ParallelExecutor, "start", lambda self, ctx, orig=parallel.ParallelExecutor.start:
                        (starts.append(self.workers), orig(self, ctx))[1])
    monkeypatch.chdir(tmp_path)
    data = tiny_suite()
    data["run"] = {**data["run"], "output": str(tmp_path / "runs"), "threads": 1}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(data))
    with RunLock(tmp_path / "runs" / "tiny"):
        assert main(["run", "tiny.yaml", "--workers", "2", "--no-tracking", "--no-figures"]) == 2
    assert "in use" in capsys.readouterr().err
    assert starts == [2]  # the workers had been started
    assert multiprocessing.active_children() == []
    assert not (tmp_path / "runs" / "tiny" / "records").exists()  # nothing ran


# ---- the driver's bookkeeping, with a fake pool that finishes the last job it started first -------


@pytest.fixture
def fake_walk(monkeypatch):
    def run(pairs, workers=2, fail=(), full=None):
        started: list[list[str]] = []  # the jobs in flight at each start
        releases: list[frozenset] = []
        records: list[tuple[str, str, str | None]] = []
        closed: list[list[str]] = []  # the jobs in flight when the pool was closed

        class FakePool:
            def __init__(self, size, spec, threads):
                assert (size, threads) == (workers, 1)
                self.running: list = []

            idle = property(lambda self: workers - len(self.running))
            busy = property(lambda self: len(self.running))

            def submit(self, job, release):
                self.running.append(job)
                started.append([j.id for j in self.running])
                releases.append(release)

            def next_outcome(self):
                job = self.running.pop()
                if job.id in fail:
                    error = f"DiskFullError: {full}" if full else f"RuntimeError: boom in {job.id}"
                    return job, ("failed", job.id, error, "Traceback ...", full)
                if job.kind == "pair":
                    return job, ("ok", job.id, {"record": {"pair": job.pair.record_name, "status": "ok"},
                                                "trace": None})
                return job, ("ok", job.id, f"key-{job.id}")

            def close(self):
                closed.append([j.id for j in self.running])

        monkeypatch.setattr(parallel, "WorkerPool", FakePool)
        monkeypatch.setattr(parallel.ContextSpec, "of", classmethod(lambda cls, ctx: None))
        monkeypatch.setattr(parallel, "write_record", lambda folder, rec: None)
        monkeypatch.setattr(local, "record_failed_pair", lambda ctx, pair, error, trace_text: {
            "pair": pair.record_name, "status": "failed", "error": error})
        ctx = _Ctx()
        ctx.records_dir = Path("records")
        jobs = job_graph(_plan(pairs), pairs)
        executor = parallel.ParallelExecutor(workers, 1)
        sink = lambda rec, trace: records.append((rec["pair"], rec["status"], rec.get("error")))  # noqa: E731
        if full:
            with pytest.raises(DiskFullError, match="no space left on device"):
                executor.execute(ctx, jobs, sink)
        else:
            executor.execute(ctx, jobs, sink)
        assert len(closed) == 1
        ctx.in_flight_at_close = closed[0]
        return started, releases, records, ctx

    return run


def test_independent_jobs_run_at_once_and_targets_are_released(fake_walk):
    pairs = [_pair(0, 0, 0), _pair(1, 0, 0), _pair(2, 0, 0)]
    started, releases, records, ctx = fake_walk(pairs)
    assert started[:2] == [["evaluator"], ["evaluator", "target:d0:0"]]  # the longest chain first
    assert max(len(s) for s in started) == 2  # never more than the workers
    assert sorted(r[0] for r in records) == [p.record_name for p in pairs]
    assert sorted(ctx.released) == [("d0", 0), ("d1", 0), ("d2", 0)]  # each once, after its pair
    assert releases[-1] and releases[-1] <= {("d0", 0), ("d1", 0), ("d2", 0)}  # later jobs tell the workers


def test_a_failed_job_fails_only_its_dependents(fake_walk):
    pairs = [_pair(0, 0, 0), _pair(0, 1, 0), _pair(1, 0, 0)]
    started, _, records, _ = fake_walk(pairs, fail={"target:d0:0"})
    ran = {job for s in started for job in s}
    assert not any(j.startswith(("attack:d0", "pair:d0")) for j in ran)  # never started
    assert sorted(records) == [("d0__a0__seed0.json", "failed", "RuntimeError: boom in target:d0:0"),
                               ("d0__a1__seed0.json", "failed", "RuntimeError: boom in target:d0:0"),
                               ("d1__a0__seed0.json", "ok", None)]


def test_a_full_disk_stops_the_run_after_recording_the_pairs_it_failed(fake_walk, caplog):
    pairs = [_pair(0, 0, 0), _pair(1, 0, 0), _pair(2, 0, 0)]
    full = "no space left on device writing store/reconstructions/k100 (0 bytes free)"
    # the fake pool finishes the targets and attacks, then the evaluation model; pairs 0 and 1 start, and
    # scoring pair 1 hits the full disk
    _, _, records, ctx = fake_walk(pairs, fail={"pair:d1__a0__seed0.json"}, full=full)
    assert records == [("d1__a0__seed0.json", "failed", f"DiskFullError: {full}")]
    assert ctx.in_flight_at_close == ["pair:d0__a0__seed0.json"]  # stopped, not waited for; pair 2 never started
    assert "stopping the run: the disk is full (2 pair(s) not run)" in caplog.text


def test_a_job_outside_a_worker_reports_its_error_as_text(tmp_path):
    from inversion_bench.executors.worker import ContextSpec

    spec = ContextSpec(raw={}, source="x.yaml", cwd=str(tmp_path / "gone"), plugin_files=(), run_dir=str(tmp_path),
                       suite_hash="h")
    pairs = [_pair(0, 0, 0)]
    job = job_graph(_plan(pairs), pairs)[0]
    status, job_id, error, trace_text, full = run_local_job(spec, job, 1, frozenset())
    assert (status, job_id, full) == ("failed", "evaluator", None)
    assert error.startswith("BenchError: ") and "working directory" in error and "Traceback" in trace_text


def test_workers_start_with_blas_and_openmp_pools_of_their_thread_count(monkeypatch):
    import multiprocessing

    from inversion_bench.executors.pool import worker_environment

    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # the user's setting is kept
    with worker_environment(3):
        child = multiprocessing.get_context("spawn").Pool(1)
        try:
            seen = [child.apply(os.getenv, (name,)) for name in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                                                 "OMP_NUM_THREADS")]
        finally:
            child.terminate()
    assert seen == ["3", "3", "7"]
    assert "OPENBLAS_NUM_THREADS" not in os.environ and "MKL_NUM_THREADS" not in os.environ  # restored here
    assert os.environ["OMP_NUM_THREADS"] == "7"


def test_a_failed_warm_up_is_left_to_the_first_job(tmp_path):
    """A worker loads the run's context and data before its first job; when that fails, the worker still
    serves, and the job reports the error as its own (with the message a job alone gives)."""
    from inversion_bench.executors import worker

    spec = worker.ContextSpec(raw={}, source="x.yaml", cwd=str(tmp_path / "gone"), plugin_files=(),
                              run_dir=str(tmp_path), suite_hash="h")
    worker.warm_up(spec, 1)  # no exception
    pairs = [_pair(0, 0, 0)]
    outcome = run_local_job(spec, job_graph(_plan(pairs), pairs)[0], 1, frozenset())
    assert outcome[0] == "failed" and "working directory" in outcome[2]


# ---- end to end: 1 worker against 2, a failing defense, a driver killed mid-run -------------------

PLUGINS = """
import time
import torch.nn.functional as F
from inversion_bench.interfaces import Defense
from inversion_bench.registry import defenses
PAUSED = []
@defenses.register("slow-plain")
class SlowPlain(Defense):
    "Plain training after a pause of 4 s (once per process): the run is surely mid-way when killed."
    def criterion(self, logits, targets, progress):
        if not PAUSED:
            PAUSED.append(time.sleep(4))
        return F.cross_entropy(logits, targets)
@defenses.register("nan-loss")
class NanLoss(Defense):
    "A broken defense whose loss is NaN."
    def criterion(self, logits, targets, progress):
        return logits.sum() * float("nan")
"""
# Fields that differ between any two runs (when, where, how long), left out of the comparison.
VARYING = {"created", "run_dir", "timings", "traceback", "code_version"}  # code_version: a commit between runs
VARYING_NESTED = {"target": {"seconds", "images_per_second"}, "attack_info": {"seconds"}, "setup": {"overrides"}}


def _comparable(record: dict) -> dict:
    """``record`` without the fields that differ between runs (the attack's timings: ``*_s``)."""
    out = {k: v for k, v in record.items() if k not in VARYING}
    for key, drop in VARYING_NESTED.items():
        if isinstance(out.get(key), dict):
            out[key] = {k: v for k, v in out[key].items()
                        if k not in drop and not (key == "attack_info" and k.endswith("_s"))}
    return out


def _records(run_dir: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((run_dir / "records").glob("*.json"))}


def _bench(folder: Path, output: str, workers: int) -> subprocess.Popen:
    """``bench run`` of the suite into ``folder/output/par`` in a fresh process (its own session)."""
    data = tiny_suite(name="par", defenses=[{"id": "hard", "name": "label_smoothing", "params": {"alpha": 0.0}},
                                           {"id": "slow", "name": "slow-plain"},
                                           {"id": "broken", "name": "nan-loss"}])
    data["run"] = {**data["run"], "output": str(folder / output), "threads": 1}
    (folder / f"{output}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return subprocess.Popen([sys.executable, "-m", "inversion_bench.cli", "run", f"{output}.yaml", "--no-progress",
                             "--no-tracking", "--no-figures", "--plugin", "plugins.py", "--workers", str(workers)],
                            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def _finish(proc: subprocess.Popen) -> str:
    log = proc.communicate(timeout=600)[0].decode()
    assert proc.returncode == 1, log  # the broken defense's pair failed
    return log


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One suite (a plain, a slow and a diverging defense) run with 1 and with 2 workers."""
    folder = tmp_path_factory.mktemp("parallel")
    (folder / "plugins.py").write_text(PLUGINS)
    logs = {n: _finish(_bench(folder, f"w{n}", n)) for n in (1, 2)}
    return folder, logs


@pytest.mark.slow
def test_two_workers_write_the_records_of_one(runs):
    folder, logs = runs
    one, two = _records(folder / "w1" / "par"), _records(folder / "w2" / "par")
    assert sorted(one) == sorted(two) == ["broken__mif__seed0.json", "hard__mif__seed0.json", "slow__mif__seed0.json"]
    for name in one:
        assert _comparable(two[name]) == _comparable(one[name]), name
    assert two["hard__mif__seed0.json"]["target"]["torch_threads"] == 1  # the per-job thread count is recorded
    assert "2 worker process(es), 1 torch thread(s) each" in logs[2] and "worker process" not in logs[1]
    assert [line.split("] ", 1)[0].rsplit("[", 1)[1] for line in logs[2].splitlines()
            if "executors.parallel: [" in line] == ["1/3", "2/3", "3/3"]  # one progress line per pair


@pytest.mark.slow
def test_a_failing_defense_fails_only_its_own_pair_under_two_workers(runs):
    folder, _ = runs
    recs = _records(folder / "w2" / "par")
    assert recs["hard__mif__seed0.json"]["status"] == recs["slow__mif__seed0.json"]["status"] == "ok"
    bad = recs["broken__mif__seed0.json"]
    assert bad["status"] == "failed"
    assert bad["error"].startswith("DivergedError: target broken seed 0: training diverged at epoch 1")
    assert "Traceback" in bad["traceback"] and "DivergedError" in bad["traceback"]


def _session_processes(sid: int) -> list[int]:
    """Processes of the session ``sid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the workers through /proc (Linux)")
def test_killed_driver_leaves_no_worker_and_the_rerun_resumes(runs):
    folder, _ = runs
    run_dir = folder / "killed" / "par"
    proc = _bench(folder, "killed", 2)
    deadline = time.time() + 300
    while time.time() < deadline and not list((run_dir / "records").glob("*.json")):
        time.sleep(0.1)
    assert list((run_dir / "records").glob("*.json")), "no record appeared"
    os.kill(proc.pid, signal.SIGKILL)  # the driver only: its workers must notice and end
    proc.wait()
    before = _records(run_dir)
    assert 1 <= len(before) < 3, sorted(before)  # the slow target was still training
    deadline = time.time() + 20
    while time.time() < deadline and _session_processes(proc.pid):
        time.sleep(0.2)
    assert _session_processes(proc.pid) == [], "worker processes outlived their killed driver"

    log = _finish(_bench(folder, "killed", 2))
    after, clean = _records(run_dir), _records(folder / "w2" / "par")
    assert sorted(after) == sorted(clean)  # every pair recorded once
    kept = [name for name, rec in before.items() if rec["status"] == "ok"]  # failed pairs run again
    for name in kept:
        assert after[name]["created"] == before[name]["created"], f"{name} was run again"
    for name in clean:
        assert _comparable(after[name]) == _comparable(clean[name]), name
    assert f"{3 - len(kept)} pair(s) to run, {len(kept)} already recorded" in log
