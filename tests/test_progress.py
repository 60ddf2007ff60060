"""Progress: one overall line per finished pair (with elapsed time and ETA), progress bars that name
the target they attack, a heartbeat log line without progress bars, and what the MLflow mirror adds."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_suite

from inversion_bench import training
from inversion_bench.attacks.common import optimize
from inversion_bench.config import validate_suite
from inversion_bench.executors import local
from inversion_bench.interfaces import AttackContext
from inversion_bench.jobs import job_graph
from inversion_bench.plan import PairJob, Plan
from inversion_bench.products import mirror
from inversion_bench.registry import load_plugins
from inversion_bench.run_context import Held, RunContext


def _record(k: int, status: str = "ok") -> dict:
    return {"defense": f"d{k}", "defense_label": f"Defense {k}", "attack": "a", "attack_label": "MI-Face",
            "seed": 0, "status": status, "metrics": {"attack_acc@1": 0.4567} if status == "ok" else {},
            "error": None if status == "ok" else "RuntimeError: boom\nmore"}


def test_progress_line_states_pair_accuracy_elapsed_and_eta():
    line = local.progress_line(2, 5, _record(1), 150.0)
    assert line == "[2/5] Defense 1 × MI-Face seed 0: Acc@1 45.7 %  (elapsed 02:30, ETA 03:45)"
    failed = local.progress_line(5, 5, _record(2, "failed"), 3725.0)
    assert failed == "[5/5] Defense 2 × MI-Face seed 0: failed (RuntimeError: boom)  (elapsed 1:02:05, ETA 00:00)"


def test_the_local_executor_logs_one_line_per_pair(monkeypatch, caplog):
    pairs = [PairJob(f"d{d}", "a", 0, f"t{d}", f"k{d}", f"h{d}", f"d{d}__a__seed0.json") for d in range(3)]
    plan = Plan("data", "ev", None, {(p.defense, 0): p.target_key for p in pairs}, pairs, "suite")

    def fake_run_job(ctx, job):
        return {"record": _record(int(job.pair.defense[1:])), "trace": None} if job.kind == "pair" else "key"

    monkeypatch.setattr(local, "run_job", fake_run_job)
    ctx = SimpleNamespace(held=Held())
    with caplog.at_level(logging.INFO, logger="inversion_bench.executors.local"):
        local.LocalExecutor().execute(ctx, job_graph(plan, pairs), lambda rec, trace: None)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[")]
    assert [line.split(" Defense")[0] for line in lines] == ["[1/3]", "[2/3]", "[3/3]"]
    assert all("Acc@1 45.7 %" in line and "ETA" in line for line in lines)


def test_without_progress_bars_training_logs_a_heartbeat(monkeypatch, caplog):
    monkeypatch.setattr(training, "HEARTBEAT_S", 0.0)
    with caplog.at_level(logging.INFO, logger="inversion_bench.training"):
        bar = training._Progress("target hard seed 0", 4, show=False)
        bar.update(1)
        bar.set_postfix(loss="0.500", acc="0.80")
        bar.update(1)
        bar.close()
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[0].startswith("target hard seed 0: 1/4 batches (25 %), ")
    assert "2/4 batches (50 %), last epoch loss 0.500 acc 0.80" in msgs[1]
    monkeypatch.setattr(training, "HEARTBEAT_S", 3600.0)
    caplog.clear()
    bar = training._Progress("quiet", 4, show=False)
    bar.update(1)
    bar.close()
    assert not caplog.records  # at most one line per HEARTBEAT_S


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_bars_are_drawn_on_a_terminal_only():
    assert training.bars_wanted(True, _Stream(True))
    assert not training.bars_wanted(True, _Stream(False))  # CI, a cluster's log file
    assert not training.bars_wanted(False, _Stream(True))  # run.progress: false or --no-progress
    assert not training.bars_wanted(True, object())  # a stream that cannot say


@pytest.mark.parametrize("tty", [True, False])
def test_a_run_draws_bars_only_when_stderr_is_a_terminal(tty, tmp_path, monkeypatch):
    load_plugins()
    monkeypatch.setattr(sys, "stderr", _Stream(tty))
    loaded = validate_suite(tiny_suite(run={"device": "cpu", "progress": True}), "t.yaml")
    assert RunContext(loaded, run_dir=tmp_path / "r").settings.progress is tty
    # without bars: the trainer's heartbeat logs instead of a bar (see the heartbeat test above)
    assert RunContext(loaded, run_dir=tmp_path / "r", progress=False).settings.progress is False


def test_attack_progress_bars_name_the_attacked_target(monkeypatch):
    seen = {}

    class Stop(Exception):
        pass

    def fake_tqdm(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(optimize, "tqdm", fake_tqdm)
    ctx = AttackContext(device=torch.device("cpu"), seed=0, label="Hard labels seed 0")
    assert AttackContext(device=torch.device("cpu"), seed=0).label == ""
    with pytest.raises(Stop):
        optimize.optimize_latents(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), objective=None,
                                  make_optimizer=None, num_steps=1, batch_size=2, device=torch.device("cpu"),
                                  trace=None, desc="ppa", label=ctx.label)
    assert seen["desc"] == "ppa on Hard labels seed 0"


class _Client:
    def __init__(self) -> None:
        self.metrics, self.tags, self.artifacts = [], [], []

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self.metrics += list(metrics)
        self.tags += list(tags)

    def log_artifact(self, run_id, path):
        self.artifacts.append(json.loads(Path(path).read_text()))


def test_the_mirror_logs_curve_report_duration_provenance_and_the_record(tmp_path):
    held = Held()
    history = [{"epoch": 1, "loss": 2.0, "train_accuracy": 0.3, "lr": 0.1},
               {"epoch": 2, "loss": 1.0, "train_accuracy": 0.6, "lr": 0.1}]
    held.hold_target(("d0", 0), (None, {"history": history}))
    ctx = SimpleNamespace(held=held, store=None)
    record = {**_record(0), "defense_index": 0, "keys": {"target": "t"},
              "target": {"test_accuracy": 0.7, "epsilon": 3.5, "seconds": 12.0, "note": "x"},
              "timings": {"target_s": 12.0, "attack_s": 5.0, "metrics_s": 1.0},
              "plugin_versions": {"defense:label_smoothing": "1", "attack:ppa": "2 (mypkg 0.3)"}}
    client = _Client()
    mirror.log_extras(ctx, client, "rid", record)
    metrics = {(m.key, m.step): m.value for m in client.metrics}
    assert metrics[("target.epsilon", 0)] == 3.5 and metrics[("target.test_accuracy", 0)] == 0.7
    assert metrics[("time.pair_s", 0)] == 18.0
    assert metrics[("target_curve.loss", 1)] == 2.0 and metrics[("target_curve.loss", 2)] == 1.0
    assert metrics[("target_curve.train_accuracy", 2)] == 0.6
    tags = {t.key: t.value for t in client.tags}
    assert tags["plugin.defense:label_smoothing"].startswith("1 (inversion-bench ")
    assert tags["plugin.attack:ppa"] == "2 (mypkg 0.3)"
    assert client.artifacts == [json.loads(json.dumps(record))]
