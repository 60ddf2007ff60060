"""A `bench run` with nothing to do leaves the report alone when its inputs did not change (issue 19),
and `bench list`/`validate`/`--help` do not import matplotlib, mlflow or ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from inversion_bench.cli import main
from inversion_bench.leaderboard.report_key import REPORT_KEY, report_key, up_to_date
from tests.conftest import tiny_suite

ROOT = Path(__file__).resolve().parents[1]


def _run(suite: Path, *extra: str) -> int:
    n = torch.get_num_threads()
    try:
        return main(["run", str(suite), "--no-tracking", *extra])
    finally:
        torch.set_num_threads(n)


def _mtimes(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_noop_rerun_skips_the_report_and_a_changed_record_rebuilds_it(tmp_path, capsys):
    data = tiny_suite()
    data["run"] = {**data["run"], "output": str(tmp_path / "runs"), "threads": 1}
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump(data, sort_keys=False))
    assert _run(suite) == 0
    run_dir = tmp_path / "runs" / "tiny"
    out = run_dir / "leaderboard"
    assert (out / REPORT_KEY).is_file()
    assert list((out / "figures").glob("*.png")), "the first run draws figures"
    before = _mtimes(out)
    capsys.readouterr()

    assert _run(suite, "--recheck") == 0  # the full path (without it: the fast path, tests/test_fastpath.py)
    text = capsys.readouterr().out
    assert f"nothing changed; the report is up to date ({out / 'index.html'})" in text
    assert _mtimes(out) == before, "a no-op rerun rewrote report files"

    # a changed record (same config hash: not rerun) changes the report's inputs: rebuilt
    rec_path = sorted((run_dir / "records").glob("*.json"))[0]
    rec = json.loads(rec_path.read_text())
    rec["metrics"]["test_accuracy"] = 0.123456
    rec_path.write_text(json.dumps(rec))
    assert _run(suite) == 0
    text = capsys.readouterr().out
    assert "nothing changed" not in text
    after = _mtimes(out)
    changed = {p for p in before if after.get(p) != before[p]}
    assert out / "leaderboard.md" in changed and out / "index.html" in changed
    assert any(p.suffix == ".png" for p in changed), "figures are redrawn with the report"
    assert "0.123" in (out / "records.csv").read_text()

    # other report options (no figures) are other inputs; a deleted output file forces a rebuild
    assert not up_to_date(out, report_key([run_dir], out, figures=False))
    assert up_to_date(out, report_key([run_dir], out, figures=True))
    (out / "leaderboard.tex").unlink()
    assert not up_to_date(out, report_key([run_dir], out, figures=True))


def test_light_commands_do_not_import_heavy_libraries():
    code = (
        "import sys\n"
        "from inversion_bench.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert main(['list']) == 0\n"
        "assert main(['validate', 'suites/quickstart.yaml']) == 0\n"
        "print('HEAVY', sorted(m for m in ('matplotlib', 'mlflow', 'ray', 'sklearn') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout[-2000:]
