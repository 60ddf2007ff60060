"""The attack heartbeat (benchmark/heartbeat.py): without progress bars, a long attack logs a line every
``training.HEARTBEAT_S`` seconds, like training."""

from __future__ import annotations

import io
import logging
import time

from inversion_bench import training
from inversion_bench.heartbeat import Heartbeat, heartbeat_line, wanted


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_heartbeat_line_names_attack_target_queries_budget_and_seconds():
    assert heartbeat_line("attack mif on hard seed 0", 12345, "300 steps x 4 restarts per identity", 61.4) == (
        "attack mif on hard seed 0: 12,345 queries (budget: 300 steps x 4 restarts per identity), 61 s")
    assert heartbeat_line("attack x on y", None, None, 30.0) == "attack x on y: 30 s"


def test_it_beats_without_progress_bars_or_when_stderr_is_not_a_terminal():
    assert wanted(False, _Tty()) and wanted(True, io.StringIO())
    assert not wanted(True, _Tty())


def test_heartbeat_logs_every_interval_while_the_attack_runs_and_stops_after(monkeypatch, caplog):
    monkeypatch.setattr(training, "HEARTBEAT_S", 0.05)
    queries = iter(range(0, 10_000, 100))
    with caplog.at_level(logging.INFO, logger="inversion_bench.heartbeat"):
        with Heartbeat("attack mb on soft seed 1", lambda: next(queries), "5 generations") as beat:
            time.sleep(0.3)
        n = len(caplog.records)
        time.sleep(0.15)
    assert 2 <= n == beat.lines == len(caplog.records)  # and nothing once the block ended
    first = caplog.records[0].getMessage()
    assert first.startswith("attack mb on soft seed 1: 0 queries (budget: 5 generations), ")
    assert caplog.records[1].getMessage().startswith("attack mb on soft seed 1: 100 queries")


def test_no_heartbeat_when_off_or_before_the_interval(monkeypatch, caplog):
    monkeypatch.setattr(training, "HEARTBEAT_S", 0.05)
    with caplog.at_level(logging.INFO, logger="inversion_bench.heartbeat"):
        with Heartbeat("off", lambda: 0, on=False):
            time.sleep(0.12)
        monkeypatch.setattr(training, "HEARTBEAT_S", 3600.0)
        with Heartbeat("quiet", lambda: 0):
            time.sleep(0.05)
    assert not caplog.records
