"""The no-op fast path of `bench run` (issue 19): a rerun with nothing changed answers from the stamp
of the last clean run without importing torch or MLflow; any change takes the full path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_suite

from inversion_bench import fastpath
from inversion_bench.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _run(*argv: str) -> int:
    n = torch.get_num_threads()
    try:
        return main(["run", *argv])
    finally:
        torch.set_num_threads(n)


@pytest.fixture
def done(tmp_path: Path, capsys) -> tuple[Path, Path]:
    """A tiny suite (tracked to the run folder's SQLite store) after one clean run."""
    data = tiny_suite()
    data["run"] = {**data["run"], "output": str(tmp_path / "runs"), "threads": 1}
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump(data, sort_keys=False))
    assert _run(str(suite), "--no-figures") == 0
    capsys.readouterr()
    return suite, tmp_path / "runs" / "tiny"


def _fresh_process(argv: list[str]) -> subprocess.CompletedProcess:
    """``bench`` in a new interpreter; prints which heavy modules it imported."""
    code = ("import sys; from inversion_bench.cli import main; rc = main(sys.argv[1:]); "
            "print('IMPORTED', sorted(m for m in ('torch', 'mlflow', 'matplotlib', 'pydantic') if m in sys.modules)); "
            "sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ}, timeout=600)


def test_a_noop_rerun_imports_no_torch_and_says_nothing_changed(done):
    suite, run_dir = done
    out = _fresh_process(["run", str(suite), "--no-figures"])
    assert out.returncode == 0, out.stderr
    assert "nothing changed since the run of " in out.stdout
    assert f"run folder: {run_dir}  (0 ran, 2 from cache, 0 failed)" in out.stdout
    assert "IMPORTED []" in out.stdout


def test_any_change_takes_the_full_path(done, capsys):
    suite, run_dir = done
    args = [str(suite), "--no-figures"]
    assert _run(*args) == 0
    assert "nothing changed since the run of" in capsys.readouterr().out
    # another option is another request: full path (and its own stamp)
    assert _run(*args, "--seeds", "0") == 0
    assert "nothing changed since the run of" not in capsys.readouterr().out
    # a record edited by hand
    rec = sorted((run_dir / "records").glob("*.json"))[0]
    rec.write_text(rec.read_text().replace('"seed": 0', '"seed":  0'))
    assert _run(*args) == 0
    text = capsys.readouterr().out
    assert "nothing changed since" not in text and "0 failed" in text
    assert _run(*args) == 0
    assert "nothing changed since the run of" in capsys.readouterr().out
    # the suite file: a new seed runs new pairs
    data = yaml.safe_load(suite.read_text())
    data["seeds"] = [0, 1]
    suite.write_text(yaml.safe_dump(data, sort_keys=False))
    assert _run(*args) == 0
    assert "(2 ran, 2 from cache, 0 failed)" in capsys.readouterr().out
    # --recheck checks everything even when nothing changed
    assert _run(*args, "--recheck") == 0
    text = capsys.readouterr().out
    assert "nothing changed since the run of" not in text and "(0 ran, 4 from cache, 0 failed)" in text


def test_a_changed_module_or_include_file_takes_the_full_path(tmp_path: Path, capsys):
    data = tiny_suite()
    data["run"] = {**data["run"], "output": str(tmp_path / "runs"), "threads": 1}
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(data, sort_keys=False))
    suite = tmp_path / "suite.yaml"
    suite.write_text("include: base.yaml\nname: tiny-inc\n")
    assert _run(str(suite), "--no-figures", "--no-tracking") == 0
    stamp = json.loads(fastpath.stamp_file(_args(suite)).read_text())
    assert str(base.resolve()) in stamp["watch"]["contents"]
    assert any(f.endswith("inversion_bench/fastpath.py") or f.endswith("benchmark/fastpath.py")
               for f in stamp["watch"]["stats"])
    assert stamp["state"]["contents"][str(base.resolve())] is not None
    capsys.readouterr()
    base.write_text(base.read_text() + "\n# a comment changes the file\n")
    assert fastpath.unchanged(_args(suite)) is None
    assert _run(str(suite), "--no-figures", "--no-tracking") == 0
    assert "nothing changed since the run of" not in capsys.readouterr().out
    assert fastpath.unchanged(_args(suite)) is not None


def test_the_request_is_taken_once_before_the_run_changes_the_environment(tmp_path: Path, monkeypatch):
    """Regression: the MLflow tracker sets MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR during a run; a stamp keyed by
    the environment after the run was never found by the next identical command."""
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    args = _args(tmp_path / "suite.yaml")
    before = fastpath.stamp_file(args)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    assert fastpath.stamp_file(args) == before  # the same command object: the request taken at the start
    assert fastpath.stamp_file(_args(tmp_path / "suite.yaml")) != before  # a new command sees the new variable


def _args(suite: Path):
    from inversion_bench.cli import build_parser

    return build_parser().parse_args(["run", str(suite), "--no-figures", "--no-tracking"])


BROKEN = """
from inversion_bench import Attack, attacks


@attacks.register("test-fastpath-broken")
class Broken(Attack):
    def run(self, target, identities, prior, ctx):
        raise RuntimeError("this attack always fails")
"""


def test_a_failed_pair_writes_no_stamp(tmp_path: Path, capsys):
    plugin = tmp_path / "broken.py"
    plugin.write_text(BROKEN)
    data = tiny_suite(attacks=[{"id": "broken", "name": "test-fastpath-broken"}])
    data["run"] = {**data["run"], "output": str(tmp_path / "runs"), "threads": 1}
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump(data, sort_keys=False))
    argv = [str(suite), "--no-figures", "--no-tracking", "--plugin", str(plugin)]
    assert _run(*argv) == 1
    assert _run(*argv) == 1  # failed pairs are retried by every run: never the fast path
    assert "nothing changed since" not in capsys.readouterr().out
    from inversion_bench.cli import build_parser

    assert not fastpath.stamp_file(build_parser().parse_args(["run", *argv])).exists()
