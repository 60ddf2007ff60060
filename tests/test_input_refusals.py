"""Strict values (``strict_values``) and the inputs read outside a suite: export targets (``export``),
corrupt records (``leaderboard.records``), plugin parameters (seeds, booleans, identities), plugins that
exit at import (``registry``) and fast-path stamps (``fastpath``). Refused input is one line naming the
file, the field and the fix, exit 2, with nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from inversion_bench import fastpath
from inversion_bench.cli import main
from inversion_bench.leaderboard.records import finite
from inversion_bench.results import read_record, write_record
from tests.conftest import tiny_suite
from tests.test_preflight import _read_only
from tests.test_run_lock_and_environment import _one_line_error, _snapshot


def _validate(write_suite, capsys, data: dict, *needles: str) -> str:
    """`bench validate` of ``data``: exit 2, one line holding ``needles``, and `bench run` refuses it the same
    way before it writes anything (no run folder, store or MLflow store)."""
    suite = write_suite(data)
    assert main(["validate", str(suite), "--schema-only"]) == 2
    line = _one_line_error(capsys.readouterr().err, str(suite), *needles)
    assert main(["run", str(suite)]) == 2
    assert _one_line_error(capsys.readouterr().err) == line
    assert not (suite.parent / "runs").exists()
    return line


# ---- row 4: export into a read-only folder or under a file -----------------------------------------


@pytest.mark.parametrize("how", ["read-only", "under a file"])
def test_export_target_that_cannot_be_written(tmp_path, capsys, monkeypatch, how):
    run_dir = tmp_path / "run"
    write_record(run_dir / "records", {"defense": "hard", "attack": "mif", "seed": 0, "status": "ok",
                                       "metrics": {"attack_acc@1": 0.5}})
    before = _snapshot(run_dir)
    if how == "read-only":
        out = tmp_path / "ro"
        out.mkdir()
        _read_only(monkeypatch, out)
        expected = (f"--out {out}: {out} is read-only for this user; give a writable folder",)
    else:
        (tmp_path / "afile").write_text("keep me")
        out = tmp_path / "afile" / "export"
        expected = (f"--out {out}: {tmp_path / 'afile'} is a file, not a folder", "give a folder path")
    try:
        assert main(["export", str(run_dir), "--out", str(out)]) == 2
        _one_line_error(capsys.readouterr().err, *expected)
        assert _snapshot(run_dir) == before
        assert list(out.iterdir()) == [] if how == "read-only" else (tmp_path / "afile").read_text() == "keep me"
    finally:
        if how == "read-only":
            out.chmod(0o755)


# ---- row 5: a metric no float holds -------------------------------------------------------------------


@pytest.mark.parametrize("command", ["leaderboard", "report"])
def test_record_with_a_metric_of_ten_to_the_400_is_skipped_with_a_note(tmp_path, capsys, command):
    from tests.test_leaderboard import synthetic_records

    run_dir = tmp_path / "run"
    for r in synthetic_records():
        write_record(run_dir / "records", r)
    bad = sorted((run_dir / "records").glob("*.json"))[0]
    data = json.loads(bad.read_text())
    metric = next(iter(data["metrics"]))
    data["metrics"][metric] = 10**400
    bad.write_text(json.dumps(data))
    text = bad.read_text()
    with pytest.raises(ValueError, match=rf"metrics\.{metric}: 1000.* is not a finite number a float can hold"):
        read_record(bad)
    extra = ["--no-figures"] if command == "report" else []
    assert main([command, str(run_dir), "--output", str(tmp_path / "out"), *extra]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert f"- record {bad} skipped: it cannot be read (metrics.{metric}: 10000000000000000000... is not a finite " \
           "number a float can hold" in out  # the table's notes
    assert bad.read_text() == text  # `bench run` moves it to records/corrupt/; reports only skip it
    assert finite(10**400) is None


# ---- row 6: plugin seeds beyond 32 bits --------------------------------------------------------------


@pytest.mark.parametrize("where", ["dataset", "defense"])
def test_plugin_seed_of_two_to_the_64_is_refused_at_validate(write_suite, capsys, where):
    data = tiny_suite()
    if where == "dataset":
        data["dataset"]["params"]["seed"] = 2**64
        field = "dataset.params.seed"
    else:
        data["defenses"].append({"id": "noise", "name": "gaussian-noise", "params": {"seed": 2**64}})
        field = "defenses[2].params.seed"
    _validate(write_suite, capsys, data, f"{field}: must be <= 4294967295, got 18446744073709551616",
              "seeds are 32-bit")


# ---- row 7: more attacked identities than classes --------------------------------------------------


def test_identities_count_above_the_class_count_is_refused(write_suite, tmp_path, capsys):
    data = tiny_suite()
    data["dataset"]["split"]["private_identities"] = 3
    data["attacks"][0]["identities"] = 10
    _validate(write_suite, capsys, data, "attacks[0].identities: 10 (the first 10 classes), but there are only 3 "
              "private classes; use identities: 3 or fewer")

    # the class count known only once the data is split (private: all of 10): refused before any write
    data["dataset"]["split"]["private_identities"] = "all"
    data["attacks"][0]["identities"] = 20
    suite = write_suite(data)
    n = torch.get_num_threads()
    try:
        assert main(["run", str(suite), "--no-tracking"]) == 2
    finally:
        torch.set_num_threads(n)
    _one_line_error(capsys.readouterr().err, "attacks[0].identities: 20 (the first 20 classes), but there are only "
                    "10 private classes")
    assert not (tmp_path / "runs").exists()


# ---- row 8: booleans where numbers are expected -----------------------------------------------------


def _swept(data: dict) -> None:
    data["defenses"].append({"id": "ls", "name": "label_smoothing", "sweep": {"alpha": [True, 0.1]}})


@pytest.mark.parametrize("mutate, field, kind", [
    (_swept, "defenses[2].sweep.alpha", "a number"),
    (lambda d: d["target"]["training"].update(lr=True), "target.training.lr", "a number"),
    (lambda d: d["target"]["training"].update(epochs=True), "target.training.epochs", "an integer"),
    (lambda d: d["defenses"][0]["params"].update(alpha=False), "defenses[0].params.alpha", "a number"),
])
def test_booleans_are_not_numbers(write_suite, capsys, mutate, field, kind):
    data = tiny_suite()
    mutate(data)
    word = "false" if "params.alpha" in field else "true"
    _validate(write_suite, capsys, data, f"{field}: {word} is a boolean, but {kind} is expected here; write the "
              "number itself")


# ---- row 12: a plugin that calls sys.exit at import ---------------------------------------------------


def test_plugin_that_exits_at_import_is_named_and_the_others_work(tmp_path, write_suite):
    site = tmp_path / "site"
    dist = site / "gaveup-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gaveup\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[bench.defenses]\nquitter = gaveup_plugin\n")
    (site / "gaveup_plugin.py").write_text("import sys\nsys.exit('plugin gave up')\n")
    env = {**os.environ, "PYTHONPATH": str(site)}

    def bench(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "inversion_bench.cli", *argv], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=300)

    out = bench("list", "defenses")
    assert out.returncode == 0, out.stderr
    assert "label_smoothing" in out.stdout
    assert ("could not load plugin quitter (entry point bench.defenses:quitter (gaveup 1.0)): it called "
            "sys.exit('plugin gave up') while being imported; it is left out (fix or uninstall gaveup)") in out.stderr
    assert bench("--help").returncode == 0
    assert bench("validate", str(write_suite(tiny_suite())), "--schema-only").returncode == 0

    plugin = tmp_path / "quits.py"
    plugin.write_text("import sys\nsys.exit(3)\n")
    out = bench("list", "--plugin", str(plugin))
    assert out.returncode == 2
    _one_line_error(out.stderr, f"--plugin {plugin}: it called sys.exit(3) while being imported")


# ---- row 13: a stamp that watches nothing --------------------------------------------------------------


def test_stamp_that_watches_nothing_is_ignored(tmp_path, capsys):
    data = tiny_suite()
    data["defenses"] = data["defenses"][:1]
    data["run"] = {**data["run"], "output": str(tmp_path / "runs"), "threads": 1}
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump(data, sort_keys=False))
    argv = ["run", str(suite), "--no-figures", "--no-tracking"]
    n = torch.get_num_threads()
    try:
        assert main(argv) == 0
        from inversion_bench.cli import build_parser

        path = fastpath.stamp_file(build_parser().parse_args(argv))
        stamp = json.loads(path.read_text())
        assert stamp["covers"]["records"] == ["hard__mif__seed0.json"]
        # foreign: the same request's stamp, said to cover another suite
        path.write_text(json.dumps({**stamp, "covers": {**stamp["covers"], "suite": str(tmp_path / "other.yaml")}}))
        assert fastpath.unchanged(build_parser().parse_args(argv)) is None
        # forged or older: watching nothing, so "nothing changed" would hold whatever happens
        empty = {"contents": [], "stats": [], "folders": []}
        forged = {k: v for k, v in stamp.items() if k != "covers"}
        path.write_text(json.dumps({**forged, "watch": empty, "state": {**fastpath._state(empty)}}))
        record = tmp_path / "runs" / "tiny" / "records" / "hard__mif__seed0.json"
        record.unlink()
        capsys.readouterr()
        assert main(argv) == 0
    finally:
        torch.set_num_threads(n)
    out = capsys.readouterr().out
    assert "nothing changed" not in out and "(1 ran, 0 from cache, 0 failed)" in out
    assert record.exists()
