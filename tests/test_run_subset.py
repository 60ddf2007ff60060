"""``bench run``: the dry run's reuse listing (benchmark/dry_run.py), ``--defenses``/``--attacks``
(benchmark/selection.py) and the short summary at the end of a run."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest

from inversion_bench import training
from inversion_bench.attacks.mi_face import MIFace
from inversion_bench.cli import main
from inversion_bench.dry_run import KindState, dry_run_lines, product_states
from inversion_bench.jobs import job_graph
from inversion_bench.plan import PairJob, Plan
from inversion_bench.selection import Selection
from tests.conftest import tiny_suite


def _pair(d: int, seed: int, attack: str = "a") -> PairJob:
    name = ["hard", "soft"][d]
    return PairJob(d, 0, seed, name, attack, f"t{d}{seed}", f"k{d}{seed}", f"h{d}{seed}",
                   f"{name}__{attack}__seed{seed}.json")


def test_product_states_split_found_and_missing_products_by_kind():
    pairs = [_pair(0, 0), _pair(0, 1), _pair(1, 0)]
    plan = Plan("data", "ev", "pr", {(p.defense_index, p.seed): p.target_key for p in pairs}, pairs, "suite")
    todo = pairs[1:]
    stored = {("evaluators", "ev"), ("targets", "t10"), ("attacks", "k10")}
    states = product_states(plan, job_graph(plan, todo, [True]), todo, pairs[:1], lambda k, key: (k, key) in stored)
    by = {s.title: (s.reuse, s.compute) for s in states}
    assert list(by) == ["targets", "evaluation model", "prior", "attack runs", "scores"]
    assert by["targets"] == (["soft seed 0"], ["hard seed 1"])
    assert by["evaluation model"] == (["evaluation model"], [])
    assert by["prior"] == ([], ["prior"])
    assert by["attack runs"] == (["soft x a seed 0"], ["hard x a seed 1"])
    assert by["scores"] == (["hard x a seed 0"], ["hard x a seed 1", "soft x a seed 0"])


def test_dry_run_lines_count_and_name_products():
    states = [KindState("targets", ["hard seed 0"], ["hard seed 1", "soft seed 1"]), KindState("prior", [], ["prior"])]
    assert dry_run_lines(states, 2, 1, "runs/x", most=1) == [
        "2 pair(s) to run, 1 already recorded in runs/x",
        "products: 1 found in the store (reused), 3 to compute",
        "  targets: 1 reused (hard seed 0); 2 to compute (hard seed 1, ...)",
        "  prior:   0 reused; 1 to compute (prior)",
    ]


def test_selection_keeps_only_the_named_entries():
    pairs = [_pair(0, 0), _pair(1, 0), _pair(0, 0, "b")]
    assert Selection(frozenset({"hard"})).filter(pairs) == [pairs[0], pairs[2]]
    assert Selection(None, frozenset({"b"})).filter(pairs) == [pairs[2]]


def _records(run_dir: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((run_dir / "records").glob("*.json"))}


@pytest.mark.slow
def test_subset_runs_add_seeds_keep_other_records_and_the_report_reads_all(write_suite, tmp_path, capsys, caplog,
                                                                         monkeypatch):
    suite = write_suite(tiny_suite(run={"device": "cpu", "progress": False, "threads": 1}))
    run_dir = tmp_path / "runs" / "tiny"
    assert main(["run", str(suite), "--no-tracking", "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "| Defense" not in out  # the table is in leaderboard.md, not on stdout
    assert "pairs: 2 ran, 0 reused (recorded before), 0 failed" in out
    assert f"report: {run_dir / 'leaderboard' / 'index.html'}" in out
    assert f"tables: {run_dir / 'leaderboard' / 'leaderboard.md'}" in out
    before = _records(run_dir)

    # a dry run with a second seed for `hard` only: the evaluation model is reused, the rest computed
    assert main(["run", str(suite), "--no-tracking", "--defenses", "hard", "--seeds", "0,1", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"1 pair(s) to run, 1 already recorded in {run_dir}"
    assert "  evaluation model: 1 reused (evaluation model); 0 to compute" in out
    assert "  targets:          0 reused; 1 to compute (hard seed 1)" in out
    assert "  scores:           1 reused (hard x mif seed 0); 1 to compute (hard x mif seed 1)" in out

    monkeypatch.setattr(training, "HEARTBEAT_S", 0.02)  # the attack's heartbeat (run.progress: false) ...
    run = MIFace.run

    def slow_run(self, *args, **kwargs):  # ... in an attack that lasts several intervals
        time.sleep(0.2)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(MIFace, "run", slow_run)
    with caplog.at_level(logging.INFO, logger="inversion_bench.heartbeat"):
        assert main(["run", str(suite), "--no-tracking", "--no-figures", "--defenses", "hard", "--seeds", "0,1"]) == 0
    beats = [r.getMessage() for r in caplog.records if r.name == "inversion_bench.heartbeat"]
    assert beats and beats[0].startswith("attack mif on hard seed 1: ")
    assert "queries (budget: 3 steps x 2 restarts per identity), " in beats[-1]
    out = capsys.readouterr().out
    assert "pairs: 1 ran, 1 reused (recorded before), 0 failed" in out
    after = _records(run_dir)
    assert sorted(after) == sorted([*before, "hard__mif__seed1.json"])
    assert all(after[name] == text for name, text in before.items())  # the other entries' records untouched
    seeds = {(json.loads(t)["defense"], json.loads(t)["seed"]) for t in after.values()}
    new = json.loads(after["hard__mif__seed1.json"])
    assert new["attack_info"]["budget"] == "3 steps x 2 restarts per identity"  # the cost table reads it
    assert seeds == {("hard", 0), ("hard", 1), ("negls", 0)}
    table = (run_dir / "leaderboard" / "leaderboard.md").read_text()
    assert "negls" in table and "hard" in table  # the report reads every record of the folder


@pytest.mark.parametrize("option, value, message", [
    ("--defenses", "hard,nope", "--defenses: nope is not an entry of suite tiny"),
    ("--attacks", "x,y", "--attacks: x, y are not entries of suite tiny"),
    ("--attacks", ",", "--attacks ',': give entry ids separated by commas; choices: mif"),
])
def test_unknown_entries_are_refused_with_the_choices(write_suite, tmp_path, capsys, option, value, message):
    suite = write_suite(tiny_suite())
    assert main(["run", str(suite), "--no-tracking", option, value]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "choices: " + ("hard, negls" if option == "--defenses" else "mif") in err
    assert not (tmp_path / "runs" / "tiny").exists()  # refused before any work
