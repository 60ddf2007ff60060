"""The run-folder lock (``lock``), the CLI's environment checks (one line, exit 2, no traceback, the run
folder unchanged; the device check) and the MLflow mirror (``tracking``), whose broken store never costs
a record."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from inversion_bench.cli import main
from inversion_bench.lock import RunLock, RunLockedError, read_lock
from tests.conftest import tiny_suite


def _tiniest(**overrides) -> dict:
    """One defense, one attack, one seed, one epoch: a whole run in a few seconds."""
    data = tiny_suite(**overrides)
    data["defenses"] = data["defenses"][:1]
    data["attacks"] = [{"id": "mif", "name": "mi-face", "params": {"steps": 2, "restarts": 1}}]
    data["metrics"] = ["test_accuracy", "attack_accuracy"]
    for part in ("target", "evaluation"):
        data[part] = {**data[part], "training": {"epochs": 1, "batch_size": 16}}
    data["run"] = {**data["run"], "threads": 1, "workers": 1}  # in this process: tests patch what the jobs call
    return data


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with its size and mtime (what "unchanged" compares)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _one_line_error(err: str, *needles: str) -> str:
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def mlflow_template(tmp_path_factory) -> Path:
    """An empty, migrated MLflow store: copied into a run folder it saves each run the migrations."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


def _mlflow_runs(run_dir: Path, experiment: str) -> int:
    """The MLflow runs of ``experiment`` in the run folder's store, read with sqlite3 (no MLflow caches)."""
    con = sqlite3.connect(run_dir / "mlflow.db")
    try:
        return con.execute("SELECT count(*) FROM runs JOIN experiments USING (experiment_id) WHERE "
                           "experiments.name = ? AND runs.lifecycle_stage = 'active'", (experiment,)).fetchone()[0]
    finally:
        con.close()


def _forget_mlflow_store(db: Path) -> None:
    """What a new process does: MLflow keeps one store and one SQLAlchemy engine per URI in a process
    (a new `bench run` is a new process; this test runs both in one)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking._tracking_service.registry import TrackingStoreRegistry

    TrackingStoreRegistry._get_store_with_resolved_uri.cache_clear()
    engines = getattr(SqlAlchemyStore, "_engine_map", {})
    for uri in [u for u in engines if u.endswith(str(db.resolve()))]:
        engines.pop(uri).dispose()


# ---- the lock itself -------------------------------------------------------------------------------


def test_lock_is_exclusive_and_released_on_exceptions(tmp_path):
    run_dir = tmp_path / "runs" / "x"
    with RunLock(run_dir) as lock:
        info = read_lock(run_dir / ".lock")
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname() and info["start"]
        with lock:  # re-entrant within one object
            pass
        assert (run_dir / ".lock").exists()
        with pytest.raises(RunLockedError) as exc:
            RunLock(run_dir).acquire()
        msg = str(exc.value)
        assert f"pid {os.getpid()}" in msg and socket.gethostname() in msg and info["start"] in msg
        assert str(run_dir) in msg and "\n" not in msg
    assert not (run_dir / ".lock").exists()
    for error in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            with RunLock(run_dir):
                raise error
        assert not (run_dir / ".lock").exists()


def test_stale_and_foreign_locks(tmp_path, caplog):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stale = {"pid": _dead_pid(), "host": socket.gethostname(), "start": "2020-01-01T00:00:00", "command": "bench run"}
    (run_dir / ".lock").write_text(json.dumps(stale))
    with caplog.at_level(logging.WARNING, logger="inversion_bench.lock"):
        with RunLock(run_dir):
            assert read_lock(run_dir / ".lock")["pid"] == os.getpid()
    assert f"stale lock of pid {stale['pid']}" in caplog.text
    assert sorted(p.name for p in run_dir.iterdir()) == []  # nothing left behind

    # an empty lock file (a crash between create and write) is stale once it is old
    (run_dir / ".lock").write_text("")
    old = time.time() - 60
    os.utime(run_dir / ".lock", (old, old))
    with RunLock(run_dir):
        pass

    # a lock of another host cannot be checked: respected, and the message says which file to delete
    (run_dir / ".lock").write_text(json.dumps({**stale, "host": "elsewhere.example"}))
    with pytest.raises(RunLockedError, match=r"on host elsewhere\.example .*delete .*\.lock"):
        RunLock(run_dir).acquire()


def test_lock_leaves_no_folder_when_nothing_was_written(tmp_path):
    run_dir = tmp_path / "a" / "b"
    with RunLock(run_dir):
        assert run_dir.is_dir()
    assert not (tmp_path / "a").exists()


# ---- the lock in `bench run` -------------------------------------------------------------------------


def test_run_on_a_folder_in_use_stops_at_once(write_suite, tmp_path, capsys):
    suite = write_suite(_tiniest())
    run_dir = tmp_path / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / ".lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                   "start": "2024-05-01T10:00:00+00:00", "command": "bench run"}))
        before = _snapshot(run_dir)
        t0 = time.perf_counter()
        assert main(["run", str(suite)]) == 2
        assert time.perf_counter() - t0 < 20
        _one_line_error(capsys.readouterr().err, f"pid {holder.pid}", socket.gethostname(),
                        "2024-05-01T10:00:00+00:00", str(run_dir))
        assert _snapshot(run_dir) == before
    finally:
        holder.kill()
        holder.wait()


def _bench(suite: Path, cwd: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen([sys.executable, "-m", "inversion_bench.cli", "run", str(suite), "--no-progress",
                             "--no-figures", *extra], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


SLEEPY = """
import time
import torch.nn.functional as F
from inversion_bench.interfaces import Defense
from inversion_bench.registry import defenses
PAUSED = []
@defenses.register("sleepy")
class Sleepy(Defense):
    "Plain training after a pause of 3 s: the run that proceeds holds the folder a while for sure."
    def criterion(self, logits, targets, progress):
        if not PAUSED:
            PAUSED.append(time.sleep(3))
        return F.cross_entropy(logits, targets)
"""


def test_two_concurrent_runs_one_proceeds_and_nothing_is_duplicated(write_suite, tmp_path, mlflow_template):
    plugin = tmp_path / "sleepy.py"
    plugin.write_text(SLEEPY)
    suite = write_suite(_tiniest(defenses=[{"id": "sleepy", "name": "sleepy"}]))
    run_dir = tmp_path / "runs" / "tiny"
    # a stale lock of a killed run: the winner takes it over with a warning
    run_dir.mkdir(parents=True)
    shutil.copy(mlflow_template, run_dir / "mlflow.db")
    (run_dir / ".lock").write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(),
                                               "start": "2020-01-01T00:00:00", "command": "bench run"}))
    procs = [_bench(suite, tmp_path, "--plugin", str(plugin)) for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    loser = next(r for r in results if r[0] == 2)
    _one_line_error(loser[2], "is in use by pid", str(run_dir))
    # the stale lock is moved aside by one of them (with the warning); the other may still create the new
    # lock first (the taker's own create then finds it live), so the warning is not always the winner's
    assert sum("taking over the stale lock" in r[2] for r in results) == 1, results
    records = sorted((run_dir / "records").glob("*.json"))
    assert [p.name for p in records] == ["sleepy__mif__seed0.json"]
    assert json.loads(records[0].read_text())["status"] == "ok"
    assert _mlflow_runs(run_dir, "tiny") == 1
    assert not (run_dir / ".lock").exists()


# ---- CLI and environment errors ---------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--run-dir", "--output"])
def test_run_folder_that_is_a_file(write_suite, tmp_path, capsys, option):
    suite = write_suite(_tiniest())
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    assert main(["run", str(suite), option, str(afile)]) == 2
    _one_line_error(capsys.readouterr().err, str(afile), "is a file", option)
    assert afile.read_text() == "keep me"
    assert not (tmp_path / "runs").exists()


def test_read_only_run_folder(write_suite, tmp_path, capsys, monkeypatch):
    suite = write_suite(_tiniest())
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):  # root: the permission bits do not stop it, simulate the refusal
            real = os.access
            monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == ro else real(p, mode, **kw))
        assert main(["run", str(suite), "--output", str(ro)]) == 2
        _one_line_error(capsys.readouterr().err, str(ro), "read-only", "--output")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_write_refused_while_taking_the_lock(write_suite, tmp_path, capsys, monkeypatch):
    """A folder that passes the checks but refuses the write (read-only mount): still one line, exit 2."""
    suite = write_suite(_tiniest())
    real_open = os.open

    def refuse(path, flags, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise OSError(30, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    assert main(["run", str(suite)]) == 2
    _one_line_error(capsys.readouterr().err, "Read-only file system", ".lock", "--run-dir")
    assert not (tmp_path / "runs").exists()


def test_bogus_tracking_uri(write_suite, tmp_path, capsys):
    suite = write_suite(_tiniest())
    assert main(["run", str(suite), "--tracking-uri", "bogus://x"]) == 2
    _one_line_error(capsys.readouterr().err, "bogus://x", "--no-tracking")
    assert not (tmp_path / "runs").exists()


def test_garbage_mlflow_db(write_suite, tmp_path, capsys):
    suite = write_suite(_tiniest())
    run_dir = tmp_path / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    (run_dir / "mlflow.db").write_bytes(b"this is not a database" * 100)
    before = _snapshot(run_dir)
    assert main(["run", str(suite)]) == 2
    _one_line_error(capsys.readouterr().err, str(run_dir / "mlflow.db"), "move it away", "--no-tracking")
    assert _snapshot(run_dir) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("how", [["--device", "cuda"], ["--set", "run.device=cuda:1"]])
def test_cuda_device_without_cuda(write_suite, tmp_path, capsys, how):
    suite = write_suite(_tiniest())
    assert main(["run", str(suite), *how]) == 2
    _one_line_error(capsys.readouterr().err, "CUDA is not available", "--device cpu")
    assert not (tmp_path / "runs").exists()


def test_mlflow_store_deleted_mid_run_loses_no_record(write_suite, tmp_path, capsys, caplog, monkeypatch,
                                                      mlflow_template):
    from inversion_bench.tracking import Tracker

    suite = write_suite(_tiniest(seeds=[0, 1]))
    run_dir = tmp_path / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    shutil.copy(mlflow_template, run_dir / "mlflow.db")
    real_mirror = Tracker.mirror

    def mirror_after_damage(self, record, *args, **kwargs):
        db = run_dir / "mlflow.db"
        if db.exists():  # the store is deleted, then replaced by garbage, before the first record arrives
            db.unlink()
            db.write_bytes(b"garbage" * 1000)
        return real_mirror(self, record, *args, **kwargs)

    monkeypatch.setattr(Tracker, "mirror", mirror_after_damage)
    with caplog.at_level(logging.WARNING):
        assert main(["run", str(suite), "--no-figures"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert "no more mirroring in this run" in caplog.text
    assert sorted(p.name for p in (run_dir / "records").glob("*.json")) == [
        "hard__mif__seed0.json", "hard__mif__seed1.json"]

    # the next run: the user moves the broken store away as told; every record is mirrored, none recomputed
    monkeypatch.setattr(Tracker, "mirror", real_mirror)
    (run_dir / "mlflow.db").unlink()
    _forget_mlflow_store(run_dir / "mlflow.db")
    created = {p.name: json.loads(p.read_text())["created"] for p in (run_dir / "records").glob("*.json")}
    assert main(["run", str(suite), "--no-figures"]) == 0
    assert {p.name: json.loads(p.read_text())["created"] for p in (run_dir / "records").glob("*.json")} == created
    assert _mlflow_runs(run_dir, "tiny") == 2


def test_only_the_driver_takes_the_lock():
    """Ray workers rebuild a RunContext (executors.ray), never a Runner: the lock is taken only by the processes that
    write a run folder's records (the runner, the CLI and ``bench rescore``, which writes another judge's records)."""
    from tests.test_architecture import import_graph, package_modules

    graph = import_graph(package_modules())
    users = sorted(m for m, edges in graph.items() if "inversion_bench.lock" in edges)
    assert "inversion_bench.runner" in users and set(users) <= {"inversion_bench.cli", "inversion_bench.runner",
                                                                      "inversion_bench.rescore"}


def test_attacked_identity_outside_the_classes_stops_the_run_before_any_write(write_suite, tmp_path, capsys):
    from inversion_bench.cli import main

    split = {"private_identities": "all", "public_identities": 0, "test_fraction": 0.25, "seed": 1}
    data = tiny_suite(attacks=[{"id": "mif", "name": "mi-face", "params": {"steps": 3}, "identities": [99]}])
    data["dataset"] = {**data["dataset"], "split": split}
    suite = write_suite(data)
    assert main(["run", str(suite), "--no-figures"]) == 2
    err = capsys.readouterr().err
    assert "attacks[0].identities" in err and "99" in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "tiny" / "records").exists()
