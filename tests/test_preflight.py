"""What a run checks before any work (``preflight``) and how it stops (``signals``): the tracking server,
the store, the lock file. Refused input is one line naming the option or file and the fix, exit 2,
before any work, with the run folder, the store and the MLflow store unchanged; SIGTERM stops a run like
Ctrl-C and the rerun resumes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inversion_bench.cli import main
from tests.test_run_lock_and_environment import _mlflow_runs, _one_line_error, _snapshot, _tiniest, mlflow_template  # noqa: F401


def _read_only(monkeypatch, folder: Path) -> None:
    """``folder`` read-only for this user (as root, whom permission bits do not stop, the check is simulated)."""
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == folder else real(p, mode, **kw))


# ---- row 1: an unreachable tracking server --------------------------------------------------------


def test_unreachable_tracking_server_is_refused_in_seconds(write_suite, tmp_path, capsys):
    suite = write_suite(_tiniest())
    t0 = time.perf_counter()  # a new process, as a user runs it: the probe comes before torch and the plugins load
    out = subprocess.run([sys.executable, "-m", "inversion_bench.cli", "run", str(suite), "--tracking-uri",
                          "http://127.0.0.1:9"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert time.perf_counter() - t0 < 10
    assert out.returncode == 2
    _one_line_error(out.stderr, "tracking URI http://127.0.0.1:9 (--tracking-uri / run.tracking_uri)",
                    "no server answers at 127.0.0.1:9 (ConnectionRefusedError", "--no-tracking")
    assert "Retrying" not in out.stderr
    # named by the suite (run.tracking_uri): probed after the suite is read, still before any work
    suite = write_suite(_tiniest(run={"device": "cpu", "progress": False, "tracking_uri": "http://127.0.0.1:9"}))
    t0 = time.perf_counter()
    assert main(["run", str(suite)]) == 2
    assert time.perf_counter() - t0 < 10
    _one_line_error(capsys.readouterr().err, "tracking URI http://127.0.0.1:9", "no server answers at 127.0.0.1:9")
    assert not (tmp_path / "runs").exists()


def test_unwritable_tracking_store_folder_is_refused(write_suite, tmp_path, capsys, monkeypatch):
    suite = write_suite(_tiniest())
    ro = tmp_path / "ro"
    ro.mkdir()
    _read_only(monkeypatch, ro)
    try:
        assert main(["run", str(suite), "--tracking-uri", f"sqlite:///{ro}/mlflow.db"]) == 2
        _one_line_error(capsys.readouterr().err, f"MLflow store folder {ro}", "read-only", "--tracking-uri",
                        "--no-tracking")
        assert list(ro.iterdir()) == []
        assert not (tmp_path / "runs").exists()
    finally:
        ro.chmod(0o755)


# ---- row 3: a store that is a file or read-only --------------------------------------------------


@pytest.mark.parametrize("how", ["file", "read-only"])
def test_store_that_cannot_be_written_is_refused_before_any_work(write_suite, tmp_path, capsys, monkeypatch, how):
    suite = write_suite(_tiniest())
    store = tmp_path / "store"
    if how == "file":
        store.write_text("keep me")
    else:
        store.mkdir()
        _read_only(monkeypatch, store)
    try:
        assert main(["run", str(suite), "--store", str(store)]) == 2
        expected = "is a file, not a folder" if how == "file" else "is read-only for this user"
        _one_line_error(capsys.readouterr().err, f"store {store}", expected, "--store")
        assert (store.read_text() == "keep me") if how == "file" else list(store.iterdir()) == []
        assert not (tmp_path / "runs").exists()
    finally:
        if store.is_dir():
            store.chmod(0o755)


# ---- rows 9-11: lock files that are not what `bench run` writes -----------------------------------


def _locked_run(write_suite, tmp_path, capsys, lock: dict | None) -> tuple[str, Path]:
    """`bench run` on a folder whose `.lock` holds ``lock`` (a folder when None): exit 2, nothing changed."""
    suite = write_suite(_tiniest())
    run_dir = tmp_path / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    (run_dir / "records").mkdir()
    (run_dir / "records" / "keep.json").write_text("{}")
    if lock is None:
        (run_dir / ".lock").mkdir()
    else:
        (run_dir / ".lock").write_text(json.dumps(lock))
    before = _snapshot(run_dir)
    assert main(["run", str(suite)]) == 2
    err = capsys.readouterr().err
    assert _snapshot(run_dir) == before
    return err, run_dir / ".lock"


def test_lock_with_a_huge_pid_is_of_unknown_liveness(write_suite, tmp_path, capsys):
    lock = {"pid": 2**70, "host": socket.gethostname(), "start": "2026-12-07T01:00:00", "command": "bench run"}
    err, path = _locked_run(write_suite, tmp_path, capsys, lock)
    _one_line_error(err, f"its lock {path} names the pid {2**70}", "no process id of this host",
                    f"delete {path} and run again")


def test_lock_with_a_non_numeric_pid_names_the_file(write_suite, tmp_path, capsys):
    lock = {"pid": "twelve", "host": socket.gethostname(), "start": "2026-12-07T01:00:00", "command": "bench run"}
    err, path = _locked_run(write_suite, tmp_path, capsys, lock)
    _one_line_error(err, f"its lock {path} names the pid 'twelve'", "if no `bench run` uses this folder",
                    f"delete {path} and run again")


def test_lock_that_is_a_folder(write_suite, tmp_path, capsys):
    err, path = _locked_run(write_suite, tmp_path, capsys, None)
    _one_line_error(err, f"its lock {path} is a folder", f"mv {path} {path}.moved")
    assert path.is_dir() and not list(path.parent.glob(".lock.stale-*"))


# ---- row 2: SIGTERM ---------------------------------------------------------------------------------

PAUSING = """
import os, pathlib, time
import torch.nn.functional as F
from inversion_bench.interfaces import Defense
from inversion_bench.registry import defenses
@defenses.register("pausing")
class Pausing(Defense):
    "Plain training that, once PAUSE_AFTER exists, says so in PAUSED and waits (to be stopped there)."
    def criterion(self, logits, targets, progress):
        after = os.environ.get("PAUSE_AFTER")
        if after and pathlib.Path(after).exists():
            pathlib.Path(os.environ["PAUSED"]).touch()
            time.sleep(120)
        return F.cross_entropy(logits, targets)
"""


def _bench(suite: Path, cwd: Path, env: dict[str, str], *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "inversion_bench.cli", "run", str(suite), "--no-progress",
                             "--no-figures", *extra], cwd=cwd, env={**os.environ, "CUDA_VISIBLE_DEVICES": "", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_releases_the_lock_and_the_rerun_resumes(write_suite, tmp_path, mlflow_template):  # noqa: F811
    plugin = tmp_path / "pausing.py"
    plugin.write_text(PAUSING)
    suite = write_suite(_tiniest(defenses=[{"id": "p", "name": "pausing"}], seeds=[0, 1]))
    run_dir = tmp_path / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    shutil.copy(mlflow_template, run_dir / "mlflow.db")
    first = run_dir / "records" / "p__mif__seed0.json"
    paused = tmp_path / "paused"
    proc = _bench(suite, tmp_path, {"PAUSE_AFTER": str(first), "PAUSED": str(paused)}, "--plugin", str(plugin))
    deadline = time.monotonic() + 240
    while not paused.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert paused.exists(), proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "lock is released" in err and "Traceback" not in err
    assert not (run_dir / ".lock").exists()
    assert sorted(p.name for p in (run_dir / "records").iterdir()) == [first.name]  # nothing partial, no temp file
    created = json.loads(first.read_text())["created"]

    rerun = _bench(suite, tmp_path, {}, "--plugin", str(plugin))
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert "(1 ran, 1 from cache, 0 failed)" in out
    assert sorted(p.name for p in (run_dir / "records").glob("*.json")) == [first.name, "p__mif__seed1.json"]
    assert json.loads(first.read_text())["created"] == created  # not recomputed
    assert _mlflow_runs(run_dir, "tiny") == 2  # each record mirrored once
    assert not (run_dir / ".lock").exists()
