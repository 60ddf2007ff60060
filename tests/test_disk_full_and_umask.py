"""Atomic writes (``errors.disk_full``, ``store``, ``results``) and the MLflow mirror: a full disk is
reported as such and the rerun resumes, a broken MLflow store never changes a run's outcome (one warning
per run), and written files follow the user's umask."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch

from inversion_bench import results
from inversion_bench.cli import main
from inversion_bench.errors import ConfigError, DiskFullError, disk_full
from inversion_bench.store import Store
from tests.test_run_lock_and_environment import _one_line_error, _tiniest, mlflow_template  # noqa: F401 (a fixture)

TORCH_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 2304 vs 2256"


def _enospc(path="x") -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _temp_leftovers(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# ---- disk full ------------------------------------------------------------------------------------


def test_disk_full_is_recognised_and_names_the_path_and_free_space(tmp_path):
    err = disk_full(_enospc(), tmp_path / "store" / "a")
    assert isinstance(err, DiskFullError) and isinstance(err, ConfigError)
    msg = str(err)
    assert "no space left" in msg and str(tmp_path / "store" / "a") in msg and "bytes" in msg and "\n" not in msg
    try:
        raise RuntimeError(TORCH_FULL)
    except RuntimeError as exc:
        assert disk_full(exc, tmp_path) is not None
    assert disk_full(ValueError("unexpected value"), tmp_path) is None
    assert disk_full(OSError(errno.EACCES, "Permission denied"), tmp_path) is None


def test_store_write_on_a_full_disk_leaves_nothing(tmp_path, monkeypatch):
    store = Store(tmp_path / "store")

    def full(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"half")  # a partial file, as a real full disk leaves
        raise RuntimeError(TORCH_FULL)

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskFullError) as exc:
        store.save_torch("targets", "k1", {"x": torch.zeros(2)})
    assert str(store.path("targets", "k1")) in str(exc.value) and "bytes" in str(exc.value)
    assert list((tmp_path / "store" / "targets").iterdir()) == []
    assert not store.has("targets", "k1")


def test_record_write_on_a_full_disk_leaves_nothing(tmp_path, monkeypatch):
    def fsync(fd):
        raise _enospc()

    monkeypatch.setattr(results.os, "fsync", fsync)
    with pytest.raises(DiskFullError) as exc:
        results.write_json_atomic(tmp_path / "r" / "a.json", {"a": 1})
    assert str(tmp_path / "r" / "a.json") in str(exc.value) and "no space left" in str(exc.value)
    assert list((tmp_path / "r").iterdir()) == []


def test_disk_full_in_a_run_stops_it_and_the_rerun_resumes(write_suite, tmp_path, capsys, caplog, monkeypatch):
    suite = write_suite(_tiniest(seeds=[0, 1]))
    run_dir = tmp_path / "runs" / "tiny"
    real_save = torch.save

    def save(obj, path, *args, **kwargs):
        if "targets" in Path(path).parts:
            Path(path).write_bytes(b"half")
            raise RuntimeError(TORCH_FULL)
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with caplog.at_level(logging.INFO):
        assert main(["run", str(suite), "--no-figures", "--no-tracking"]) == 2
    line = _one_line_error(capsys.readouterr().err, "no space left on device", "targets", "bytes")
    assert str(run_dir / "store" / "targets") in line
    assert "1 pair(s) not run" in caplog.text  # stopped after the first pair, not one failure per pair
    records = list((run_dir / "records").glob("*.json"))
    assert [p.name for p in records] == ["hard__mif__seed0.json"]
    rec = results.read_record(records[0])
    assert rec["status"] == "failed" and "DiskFullError" in rec["error"]
    assert _temp_leftovers(run_dir) == []
    assert not (run_dir / "store" / "targets").exists() or not any((run_dir / "store" / "targets").iterdir())
    assert not (run_dir / ".lock").exists()

    monkeypatch.setattr(torch, "save", real_save)
    assert main(["run", str(suite), "--no-figures", "--no-tracking"]) == 0
    assert sorted(results.read_record(p)["status"] for p in (run_dir / "records").glob("*.json")) == ["ok", "ok"]


def test_disk_full_writing_the_record_stops_the_run(write_suite, tmp_path, capsys, monkeypatch):
    suite = write_suite(_tiniest())
    run_dir = tmp_path / "runs" / "tiny"
    real = results.write_json_atomic

    def write(path, data):
        if Path(path).parent.name == "records":
            raise DiskFullError(str(disk_full(_enospc(path), path)), path)
        return real(path, data)

    monkeypatch.setattr(results, "write_json_atomic", write)
    assert main(["run", str(suite), "--no-figures", "--no-tracking"]) == 2
    _one_line_error(capsys.readouterr().err, "no space left on device", "hard__mif__seed0.json")
    assert list(run_dir.glob("records/*.json")) == []
    assert _temp_leftovers(run_dir) == []
    monkeypatch.setattr(results, "write_json_atomic", real)
    assert main(["run", str(suite), "--no-figures", "--no-tracking"]) == 0
    assert [results.read_record(p)["status"] for p in (run_dir / "records").glob("*.json")] == ["ok"]


# ---- tracking failures ---------------------------------------------------------------------------


def test_broken_tracking_store_is_one_warning_and_changes_nothing(write_suite, tmp_path, capsys, caplog,
                                                                  monkeypatch, mlflow_template):  # noqa: F811
    from inversion_bench.tracking import Tracker

    suite = write_suite(_tiniest(seeds=[0, 1, 2]))
    run_dir = tmp_path / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    shutil.copy(mlflow_template, run_dir / "mlflow.db")
    calls = {"mirror": 0, "mirrored": 0}

    def mirror(self, record, *args, **kwargs):  # a store that fails on every call once the run has started
        calls["mirror"] += 1
        raise RuntimeError("sqlite3.OperationalError: database disk image is malformed")

    def mirrored(self):
        calls["mirrored"] += 1
        raise RuntimeError("sqlite3.OperationalError: no such table: runs")

    monkeypatch.setattr(Tracker, "mirror", mirror)
    monkeypatch.setattr(Tracker, "mirrored", mirrored)
    with caplog.at_level(logging.WARNING):
        assert main(["run", str(suite), "--no-figures"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "MLflow" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert calls["mirror"] == 1 and calls["mirrored"] == 1  # no retry per record; one more try at the end
    assert (run_dir / "leaderboard").is_dir() and any((run_dir / "leaderboard").iterdir())
    assert len(list((run_dir / "records").glob("*.json"))) == 3


# ---- file modes ----------------------------------------------------------------------------------


def _modes(folder: Path, skip: set[str]) -> dict[str, str]:
    out = {}
    for p in [folder, *folder.rglob("*")]:
        rel = p.relative_to(folder).as_posix()
        if rel.split("/")[0] in skip:
            continue
        out[rel or "."] = oct(stat.S_IMODE(p.stat().st_mode))
    return out


def test_atomic_writes_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        results.write_json_atomic(tmp_path / "a.json", {"a": 1})
        store = Store(tmp_path / "store")
        path = store.save_torch("kind", "key", {"x": torch.zeros(1)}, meta={"m": 1})
    finally:
        os.umask(old)
    assert oct(stat.S_IMODE((tmp_path / "a.json").stat().st_mode)) == "0o640"
    assert oct(stat.S_IMODE(path.stat().st_mode)) == "0o750"
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in path.iterdir()} == {"0o640"}


def test_every_file_of_a_run_follows_the_umask(write_suite, tmp_path, umask022, mlflow_template):  # noqa: F811
    suite = write_suite(_tiniest())
    run_dir = tmp_path / "runs" / "tiny"
    assert main(["run", str(suite), "--no-figures"]) == 0
    # mlflow.db is created by SQLite itself (mode 0644 & ~umask); MLflow's artifacts are checked with the rest
    modes = _modes(run_dir, skip={"mlflow.db"})
    assert (run_dir / "suite.json").exists() and list((run_dir / "records").glob("*.json"))
    assert (run_dir / "store").is_dir() and (run_dir / "leaderboard").is_dir()
    wrong = {rel: mode for rel, mode in modes.items()
             if mode != ("0o755" if (run_dir / rel).is_dir() else "0o644")}
    assert wrong == {}
