"""The local executor with worker processes (``run.workers`` > 1, ``bench run --workers N``).

Independent jobs of the graph run at the same time in spawned worker processes
(:mod:`inversion_bench.executors.pool`), each with the same torch thread count; products move
through the store as on Ray (a product job's result is its store key, a worker reads its inputs
from the store). This process keeps the bookkeeping: it starts a job once the jobs it depends on
are done, a pair's scoring first, else the job with the longest chain of work behind it
(:func:`priority_order`: the shared prior and evaluation model, then the targets, then the attacks; ties
in the order of the in-process walk, so targets train in suite order), writes every record (one
writer), mirrors it and logs one progress line per pair. A failed job fails only its dependents, with
its error; a full disk stops the run (the jobs in flight are stopped); Ctrl-C or SIGTERM terminates
the workers. Every product is stored atomically and every record written by this process, so an
interrupted run leaves nothing partial and its rerun resumes. Records equal those of the in-process
walk at the same thread count.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from inversion_bench.errors import DiskFullError
from inversion_bench.executors.base import Executor, RecordSink
from inversion_bench.executors.local import _Walk, progress_line
from inversion_bench.executors.pool import WorkerPool
from inversion_bench.executors.worker import ContextSpec, Outcome
from inversion_bench.jobs import Job
from inversion_bench.results import write_record
from inversion_bench.run_context import RunContext

log = logging.getLogger(__name__)


def walk_order(jobs: Sequence[Job]) -> list[str]:
    """The ids of ``jobs`` in the order the in-process walk runs them: pair by pair, each after the
    jobs it needs that have not run yet, then anything no pair needs."""
    by_id = {j.id: j for j in jobs}
    order: list[str] = []
    seen: set[str] = set()

    def visit(job: Job) -> None:
        if job.id in seen:
            return
        seen.add(job.id)
        for dep in job.deps:
            visit(by_id[dep])
        order.append(job.id)

    for job in [j for j in jobs if j.kind == "pair"] + list(jobs):
        visit(job)
    return order


JOB_COST: dict[str, float] = {
    "prior": 55.0, "evaluator": 45.0, "second_evaluator": 45.0, "target": 30.0, "attack_generator": 30.0,
    "attack": 10.0, "pair": 0.3,
}
"""The typical cost of a job of each kind, in CPU seconds of the quickstart at one thread (measured
2026-12-07; the attacks there take 2-15 s): only its order matters, for :func:`priority_order`."""


def priority_order(jobs: Sequence[Job]) -> list[str]:
    """The ids of ``jobs`` by the order in which worker processes take them up when several are ready:
    pair jobs first (scoring takes a second and writes the record: records and progress lines come as
    each attack finishes), then the longest chain of work from the job to the end of the graph first (its
    own :data:`JOB_COST` and that of its costliest chain of dependents: critical path first, so that no
    worker waits at the end for a job that could have started earlier), ties in :func:`walk_order`.

    For the quickstart this starts the prior (which 9 attacks wait for) and the evaluation model first,
    then trains the targets before their attacks; in the walk's order, the prior started after a target and
    its first attack, and the last target's attacks ran on one worker while the other waited. The order
    only ranks jobs that are ready (it is not a dependency order: a pair ranks before its attack)."""
    by_id = {j.id: j for j in jobs}
    dependents: dict[str, list[str]] = defaultdict(list)
    for j in jobs:
        for dep in j.deps:
            dependents[dep].append(j.id)
    chain: dict[str, float] = {}
    walk = walk_order(jobs)
    for job_id in reversed(walk):  # dependents come later in the walk: their chains are known
        chain[job_id] = JOB_COST[by_id[job_id].kind] + max((chain[d] for d in dependents[job_id]), default=0.0)
    rank = {job_id: i for i, job_id in enumerate(walk)}
    return sorted(walk, key=lambda job_id: (by_id[job_id].kind != "pair", -chain[job_id], rank[job_id]))


class ParallelExecutor(Executor):
    """Runs the graph with ``workers`` worker processes of ``threads`` torch threads each."""

    name = "local"
    starts_ahead = True

    def __init__(self, workers: int, threads: int) -> None:
        if workers < 1 or threads < 1:
            raise ValueError(f"workers and threads must be at least 1, got {workers} and {threads}")
        self.workers = workers
        self.threads = threads
        self._started: tuple[ContextSpec, WorkerPool] | None = None  # by start(), for execute()

    def start(self, ctx: RunContext) -> None:
        """Starts the worker processes now: each imports torch and the plugins, rebuilds the run's context and
        loads its data (:func:`~inversion_bench.executors.worker.serve`) while this process still prepares
        the run (the MLflow store, the run folder), instead of after. :meth:`execute` runs the jobs on them;
        :meth:`close` ends them when the run stops before that."""
        if self._started is None:
            spec = ContextSpec.of(ctx)
            log.info("starting %d worker process(es), %d torch thread(s) each", self.workers, self.threads)
            self._started = (spec, WorkerPool(self.workers, spec, self.threads))

    def close(self) -> None:
        if self._started is not None:
            self._started[1].close()
            self._started = None

    def execute(self, ctx: RunContext, jobs: Sequence[Job], on_record: RecordSink) -> None:
        started, self._started = self._started, None
        if started is not None and (not jobs or started[0] != ContextSpec.of(ctx)):
            started[1].close()  # nothing to run, or started for another run
            started = None
        if not jobs:
            return
        workers = min(self.workers, len(jobs))
        log.info("running the jobs in %d worker process(es), %d torch thread(s) each", workers, self.threads)
        pool = started[1] if started is not None else WorkerPool(workers, ContextSpec.of(ctx), self.threads)
        _ParallelWalk(ctx, jobs, on_record).run_in(pool)


class _ParallelWalk(_Walk):
    def __init__(self, ctx: RunContext, jobs: Sequence[Job], on_record: RecordSink) -> None:
        super().__init__(ctx, jobs, on_record)
        self.rank = {job_id: i for i, job_id in enumerate(priority_order(self.jobs))}
        self.waiting = {j.id: set(j.deps) for j in self.jobs}
        self.dependents: dict[str, list[str]] = defaultdict(list)
        for j in self.jobs:
            for dep in j.deps:
                self.dependents[dep].append(j.id)
        self.ready: list[tuple[int, str]] = [(self.rank[j.id], j.id) for j in self.jobs if not j.deps]
        heapq.heapify(self.ready)
        self.released: set[tuple[str, int]] = set()  # targets no pending job uses: workers drop them

    def run_in(self, pool: WorkerPool) -> None:
        """Runs the graph on the worker processes of ``pool`` and closes it (the in-process :meth:`run` is not used)."""
        try:
            while self.disk_full is None:
                while self.ready and pool.idle:
                    job = self.by_id[heapq.heappop(self.ready)[1]]
                    pool.submit(job, frozenset(self.released))
                if not pool.busy:
                    break
                self._finish(*pool.next_outcome())
        finally:
            pool.close()  # on Ctrl-C / SIGTERM too: jobs in flight are stopped, their products never half-written
        self._stop_if_full()

    def _finish(self, job: Job, outcome: Outcome) -> None:
        if outcome[0] == "ok":
            self._complete(job, outcome[2], None)
            return
        error, trace_text, full = outcome[2:5]
        log.error("job %s failed: %s", job.id, error)
        if full is not None and self.disk_full is None:
            self.disk_full = DiskFullError(full)
        self._complete(job, None, (error, trace_text))

    def _complete(self, job: Job, result: Any, failed: tuple[str, str] | None) -> None:
        """Marks ``job`` done; its pair's record is written; dependents whose jobs are all done start
        (or, when one of those failed, are failed with its error without running)."""
        if failed is not None:
            self.failures[job.id] = failed
        self.done.add(job.id)
        if job.kind == "pair":
            self._record(job, result, failed)
        self._release(job)
        for dep_id in self.dependents[job.id]:
            self.waiting[dep_id].discard(job.id)
            if self.waiting[dep_id]:
                continue
            dependent = self.by_id[dep_id]
            inherited = next((self.failures[d] for d in dependent.deps if d in self.failures), None)
            if inherited is not None:
                self._complete(dependent, None, inherited)
            else:
                heapq.heappush(self.ready, (self.rank[dep_id], dep_id))

    def _record(self, job: Job, result: Any, failed: tuple[str, str] | None) -> None:
        """Writes the pair's record (the worker scored it) and reports it, as the in-process walk does."""
        assert job.pair is not None
        trace = None
        if failed is None:
            record, trace = result["record"], result["trace"]
            try:
                write_record(self.ctx.records_dir, record)
            except Exception as exc:  # as when the in-process pair job fails writing it
                failed = self._failure(job, exc)
                self.failures[job.id] = failed
        if failed is not None:
            record, trace = self._failed_record(job, failed), None
            if record is None:
                return
        self.on_record(record, trace)
        self.finished += 1
        log.info("%s", progress_line(self.finished, self.total, record, time.perf_counter() - self.t0))

    def _release(self, job: Job) -> None:
        super()._release(job)
        for key, count in self.users.items():
            if count == 0:
                self.released.add(key)
