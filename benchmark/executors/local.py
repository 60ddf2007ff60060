"""The in-process executor (the default): walks the job graph in this process."""

from __future__ import annotations

import logging
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from typing import Any

from inversion_bench.errors import DiskFullError, disk_full
from inversion_bench.executors.base import Executor, RecordSink
from inversion_bench.jobs import Job, record_failed_pair, run_job, target_uses
from inversion_bench.run_context import RunContext

log = logging.getLogger(__name__)


class LocalExecutor(Executor):
    """Runs the graph pair by pair in dependency order: before each pair job, the jobs it needs that
    have not run yet (its target, the prior, its attack, the evaluation model). So a pair's record
    is written as soon as it is scored, and a target is released from memory as soon as its last
    attack and scoring are done. A failed job fails every job that depends on it, with its error;
    the other pairs still run. A full disk (:class:`~inversion_bench.errors.DiskFullError`) stops the
    walk after recording the pair it hit (when its record can still be written): every later pair
    would fail the same way; the error reaches the CLI (one line, exit 2) and the next run resumes."""

    name = "local"

    def execute(self, ctx: RunContext, jobs: Sequence[Job], on_record: RecordSink) -> None:
        _Walk(ctx, jobs, on_record).run()


class _Walk:
    def __init__(self, ctx: RunContext, jobs: Sequence[Job], on_record: RecordSink) -> None:
        self.ctx = ctx
        self.jobs = list(jobs)
        self.by_id = {j.id: j for j in self.jobs}
        self.on_record = on_record
        self.users = Counter(t for t in map(target_uses, self.jobs) if t is not None)
        self.done: set[str] = set()
        self.failures: dict[str, tuple[str, str]] = {}  # job id -> (error, traceback)
        self.total = sum(1 for j in self.jobs if j.kind == "pair")
        self.finished = 0
        self.t0 = time.perf_counter()
        self.disk_full: DiskFullError | None = None  # set by the first job that found the disk full

    def run(self) -> None:
        for job in self.jobs:
            if job.kind == "pair":
                self.visit(job)
                self._stop_if_full()
        for job in self.jobs:  # anything no pair needs (none today)
            self.visit(job)
            self._stop_if_full()

    def _failure(self, job: Job, exc: BaseException) -> tuple[str, str]:
        """(error, traceback) of ``job`` failing with ``exc`` (called in its ``except`` block); the first
        full disk is kept to stop the walk, and reported as such rather than as the OSError."""
        full = disk_full(exc, None)
        if full is not None and self.disk_full is None:
            self.disk_full = full
        shown = full if full is not None else exc
        failed = (f"{type(shown).__name__}: {shown}", traceback.format_exc())
        log.error("job %s failed: %s", job.id, failed[0])
        return failed

    def _stop_if_full(self) -> None:
        if self.disk_full is not None:
            left = self.total - self.finished
            log.error("stopping the run: the disk is full (%d pair(s) not run)", left)
            raise self.disk_full

    def visit(self, job: Job) -> None:
        if job.id in self.done:
            return
        for dep in job.deps:
            self.visit(self.by_id[dep])
        failed = next((self.failures[d] for d in job.deps if d in self.failures), None)
        out: Any = None
        if failed is None:
            try:
                out = run_job(self.ctx, job)
            except Exception as exc:  # recorded on every pair that depends on this job
                failed = self._failure(job, exc)
        if failed is not None:
            self.failures[job.id] = failed
        self.done.add(job.id)
        if job.kind == "pair":
            assert job.pair is not None
            record = self._failed_record(job, failed) if failed is not None else out["record"]
            if record is None:
                return
            self.on_record(record, None if failed is not None else out["trace"])
            self.finished += 1
            log.info("%s", progress_line(self.finished, self.total, record, time.perf_counter() - self.t0))
        self._release(job)

    def _failed_record(self, job: Job, failed: tuple[str, str]) -> dict[str, Any] | None:
        """The written record of a failed pair; None when the disk is too full to write it (the run stops)."""
        assert job.pair is not None
        try:
            return record_failed_pair(self.ctx, job.pair, *failed)
        except Exception as exc:
            full = disk_full(exc, None)
            if full is None:
                raise
            self.disk_full = self.disk_full or full
            log.error("the record of %s cannot be written: %s", job.pair.record_name, full)
            return None

    def _release(self, job: Job) -> None:
        """Drops the job's target from memory once no pending job uses it."""
        used = target_uses(job)
        if used is not None:
            self.users[used] -= 1
            if self.users[used] == 0:
                self.ctx.held.release_target(used)


def _mmss(seconds: float) -> str:
    m, sec = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{sec:02d}" if m >= 60 else f"{m:02d}:{sec:02d}"


def progress_line(k: int, n: int, record: dict[str, Any], elapsed: float) -> str:
    """``[k/N] defense × attack seed s: Acc@1 x.x %  (elapsed mm:ss, ETA mm:ss)`` after the k-th of N pairs;
    the ETA is the mean time per finished pair times the pairs left."""
    pair = " × ".join(str(record.get(f"{x}_label") or record.get(x)) for x in ("defense", "attack"))
    acc = (record.get("metrics") or {}).get("attack_acc@1")
    if record.get("status") != "ok":
        result = f"failed ({str(record.get('error') or '?').splitlines()[0][:120]})"
    else:
        result = f"Acc@1 {100 * float(acc):.1f} %" if acc is not None else "ok"
    eta = elapsed / max(k, 1) * (n - k)
    return f"[{k}/{n}] {pair} seed {record.get('seed')}: {result}  (elapsed {_mmss(elapsed)}, ETA {_mmss(eta)})"
