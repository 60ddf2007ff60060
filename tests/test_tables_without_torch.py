"""The tables-only path (``bench leaderboard``) reads records alone: it runs where torch cannot be imported, on
records of every schema version (a version-1 record next to one written at the current version)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from inversion_bench.results import write_record

FIXTURE = Path(__file__).parent / "fixtures" / "records" / "v1_quickstart_record.json"

NO_TORCH = '''import sys


class _NoTorch:
    """Makes ``import torch`` fail as on a machine without it."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r} (made unimportable by the test)", name=name)
        return None


sys.meta_path.insert(0, _NoTorch())
'''


def _run_folder(root: Path) -> Path:
    run = root / "runs" / "quickstart"
    (run / "records").mkdir(parents=True)
    old = json.loads(FIXTURE.read_text(encoding="utf-8"))
    (run / "records" / "hard__mi-face__seed0.json").write_text(json.dumps(old), encoding="utf-8")
    new = {**old, "defense": "ls", "defense_label": "LS", "defense_index": 1, "config_hash": "0123456789abcdef",
           "metrics": {**old["metrics"], "attack_acc@1": 0.25, "test_accuracy": 0.8}}
    write_record(run / "records", new)  # written at the current schema version
    assert json.loads((run / "records" / "ls__mi-face__seed0.json").read_text())["schema_version"] == 2
    (run / "suite.json").write_text(json.dumps({"source": "quickstart.yaml", "suite_hash": old["suite_hash"],
                                                "suite": {"name": "quickstart", "baseline": "hard"}}))
    return run


def test_bench_leaderboard_runs_with_torch_unimportable(tmp_path: Path) -> None:
    run = _run_folder(tmp_path)
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(NO_TORCH, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")])}
    probe = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, env=env)
    assert probe.returncode != 0 and "made unimportable by the test" in probe.stderr  # the shim works
    out = tmp_path / "tables"
    done = subprocess.run([sys.executable, "-m", "inversion_bench.cli", "leaderboard", str(run), "--output", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "torch" not in done.stderr
    md = (out / "leaderboard.md").read_text(encoding="utf-8")
    assert "| Hard labels" in md and "| LS" in md
    assert "MI-Face [white-box]: attack_acc@1 (%) ↓" in md  # the unit from the records' declarations
    assert "25.0" in md and "45.0" in md  # attack_acc@1 of the two records, in percent
    for name in ("leaderboard.csv", "leaderboard.tex", "index.html", "records.csv"):
        assert (out / name).is_file(), name
