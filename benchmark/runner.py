"""A run of one suite into one run folder: prepare the folder, build the job graph of the pending
pairs, hand it to an executor, count and mirror the records as they arrive.

The work itself lives in the product modules (:mod:`inversion_bench.products`), which the job graph
(:mod:`inversion_bench.jobs`) calls; executors (:mod:`inversion_bench.executors`) walk that graph.
Products come from the store when their key is there and are computed and stored otherwise; a pair
whose record exists with the same config hash is skipped. This is both the cache and ``--resume``:
a run killed at any point and started again finishes only what is missing.

One run at a time writes a run folder: :meth:`Runner.run` holds the folder's lock
(:class:`~inversion_bench.lock.RunLock`) from before the first write to the end; a caller that writes
into the folder before or after (the CLI: the MLflow store, the report) holds :meth:`Runner.lock`
around all of it. Only this process (the driver) takes the lock, never a Ray worker.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inversion_bench.config import LoadedSuite
from inversion_bench.executors.base import Executor
from inversion_bench.jobs import attack_needs_prior, job_graph
from inversion_bench.lock import RunLock
from inversion_bench.plan import PairJob, Plan
from inversion_bench.products import mirror, record
from inversion_bench.products.data import splits
from inversion_bench.results import record_filename, write_json_atomic
from inversion_bench.run_context import RunContext
from inversion_bench.selection import Selection

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    run_dir: Path
    ok: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


class Runner:
    """Runs one suite into ``run_dir`` (default ``<run.output>/<suite name>``).

    ``ctx`` is the run's :class:`~inversion_bench.run_context.RunContext`; ``bench run`` hands it to
    the report, whose figures reuse the products it holds in memory.
    """

    def __init__(self, loaded: LoadedSuite, run_dir: Path | None = None, tracking_uri: str | None = None,
                 progress: bool | None = None, selection: Selection | None = None) -> None:
        self.ctx = RunContext(loaded, run_dir=run_dir, tracking_uri=tracking_uri, progress=progress)
        self.selection = selection  # ``--defenses``/``--attacks``: only these entries' pairs run
        self._lock = RunLock(self.ctx.run_dir)

    def lock(self) -> RunLock:
        """The run folder's lock, a re-entrant context manager: ``with runner.lock(): ...`` raises
        :class:`~inversion_bench.lock.RunLockedError` (exit 2) when another run holds the folder."""
        return self._lock

    @property
    def run_dir(self) -> Path:
        return self.ctx.run_dir

    @property
    def plan(self) -> Plan:
        return self.ctx.plan

    @property
    def tracking_uri(self) -> str | None:
        return self.ctx.tracking_uri

    def pending(self) -> tuple[list[PairJob], list[PairJob]]:
        """(pairs to run, pairs whose ok record with the same config hash exists); with a :attr:`selection`,
        only the selected entries' pairs (the others' records are left as they are)."""
        todo, skip = record.pending(self.ctx)
        if self.selection is not None:
            return self.selection.filter(todo), self.selection.filter(skip)
        return todo, skip

    def begin(self) -> tuple[RunSummary, list[PairJob]]:
        """Prepares the run folder; returns the summary (skipped pairs filled in) and the pairs to run.

        Records of pairs to run whose configuration changed are moved to ``records/superseded/``; those
        not run again get the suite's present ``report:`` settings (how the tables present them).
        Call it holding :meth:`lock` (:meth:`run` does).
        """
        ctx = self.ctx
        todo, skip = self.pending()
        if todo:  # the data's class count checks the split and the attacked identities (ConfigError) before any write
            splits(ctx)
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        ctx.store.clean_partial()
        write_json_atomic(ctx.run_dir / "suite.json", {"source": ctx.loaded.source,
                                                       "suite": ctx.suite.model_dump(mode="json"),
                                                       "suite_hash": ctx.plan.suite_hash})
        summary = RunSummary(self.run_dir)
        summary.skipped = [j.record_name for j in skip]
        log.info("%d pair(s) to run, %d already recorded", len(todo), len(skip))
        for job in todo:
            record.supersede(self.ctx, job)
        record.refresh_report_settings(self.ctx, skip)
        return summary, todo

    def run(self, tracker: Any = None, executor: Executor | None = None) -> RunSummary:
        """Runs every pending pair's jobs with ``executor`` (default: the in-process one)."""
        if executor is None:
            from inversion_bench.executors.local import LocalExecutor

            executor = LocalExecutor()
        with self._lock:
            return self._run(tracker, executor)

    def _run(self, tracker: Any, executor: Executor) -> RunSummary:
        summary, todo = self.begin()
        jobs = job_graph(self.plan, todo, attack_needs_prior(self.ctx.loaded))

        def on_record(rec: dict[str, Any], trace: dict | None) -> None:
            name = record_filename(rec["defense"], rec["attack"], rec["seed"])
            (summary.ok if rec["status"] == "ok" else summary.failed).append(name)
            if tracker is not None:
                mirror.mirror(self.ctx, tracker, rec, trace)

        executor.execute(self.ctx, jobs, on_record)
        if tracker is not None:
            mirror.mirror_missing(self.ctx, tracker)
        return summary
