"""Worker processes of the local executor: a fixed number of spawned processes, one job each at a time.

Spawned, not forked (torch's thread pools and CUDA are not fork-safe). The driver sends a job to an
idle worker and waits for the first outcome of any busy one; a worker that dies (killed, out of
memory) is reported as its job's failure and replaced. :meth:`WorkerPool.close` ends the workers;
on Ctrl-C or SIGTERM the driver terminates them (their products are written atomically, so a job
cut short leaves nothing under its final name), and a worker whose driver is killed ends itself.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

from inversion_bench.executors.worker import ContextSpec, Outcome, serve
from inversion_bench.jobs import Job

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0  # how long a terminated worker gets before it is killed


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
"""The thread pools of OpenMP and the BLAS libraries (numpy's and scipy's OpenBLAS, MKL), read when they load."""


@contextmanager
def worker_environment(threads: int) -> Iterator[None]:
    """The environment a worker process starts with: :data:`THREAD_VARIABLES` set to ``threads`` where the
    user has not set them, so that numpy, scipy and scikit-learn in a worker use as many threads as its
    torch jobs (two 1-thread workers on 2 cores, each with a 2-thread OpenBLAS, spin-waited: the FID's
    matrix square root took 0.3-1.5 s of CPU per pair instead of 0.2 s). This process's environment is
    restored after the start."""
    added = [name for name in THREAD_VARIABLES if name not in os.environ]
    for name in added:
        os.environ[name] = str(threads)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@dataclass
class _Slot:
    process: BaseProcess
    conn: Connection
    job: Job | None = None
    ran: bool = False  # has been sent a job (else it may still be warming up: terminated at close, not waited for)


class WorkerPool:
    """``size`` spawned worker processes running jobs of the run ``spec`` with ``threads`` torch threads each."""

    def __init__(self, size: int, spec: ContextSpec, threads: int) -> None:
        self._mp = multiprocessing.get_context("spawn")
        self._args = (spec, threads, logging.getLogger("inversion_bench").getEffectiveLevel(), os.getpid())
        self._slots = [self._start() for _ in range(size)]

    def _start(self) -> _Slot:
        here, there = self._mp.Pipe()
        process = self._mp.Process(target=serve, args=(there, *self._args), name="bench-worker", daemon=True)
        with worker_environment(self._args[1]):
            process.start()
        there.close()
        return _Slot(process, here)

    @property
    def idle(self) -> int:
        return sum(s.job is None for s in self._slots)

    @property
    def busy(self) -> int:
        return len(self._slots) - self.idle

    def submit(self, job: Job, release: frozenset[tuple[str, int]]) -> None:
        """Sends ``job`` to an idle worker (there must be one)."""
        slot = next(s for s in self._slots if s.job is None)
        slot.job, slot.ran = job, True
        slot.conn.send((job, release))

    def next_outcome(self) -> tuple[Job, Outcome]:
        """Waits for the first busy worker to finish its job; returns (job, outcome)."""
        busy = [s for s in self._slots if s.job is not None]
        if not busy:
            raise RuntimeError("no job is running")
        while True:
            ready = set(wait([s.conn for s in busy] + [s.process.sentinel for s in busy]))
            for slot in busy:
                if slot.conn in ready or slot.conn.poll():
                    try:
                        outcome = slot.conn.recv()
                    except (EOFError, OSError):
                        return self._died(slot)
                    job, slot.job = slot.job, None
                    assert job is not None
                    return job, outcome
            for slot in busy:
                if slot.process.sentinel in ready:
                    return self._died(slot)

    def _died(self, slot: _Slot) -> tuple[Job, Outcome]:
        """The outcome of a job whose worker died; the worker is replaced."""
        job = slot.job
        assert job is not None
        slot.process.join(1.0)
        code = slot.process.exitcode
        slot.conn.close()
        self._slots[self._slots.index(slot)] = self._start()
        reason = f"the worker process running it died (exit code {code}; killed, or out of memory?)"
        return job, ("failed", job.id, f"WorkerDied: {reason}", f"job {job.id}: {reason}", None)

    def close(self) -> None:
        """Ends every worker: idle ones are asked to stop, busy ones and those never sent a job (still warming
        up, :func:`~inversion_bench.executors.worker.warm_up`) terminated, stragglers killed."""
        for slot in self._slots:
            try:
                if slot.job is None and slot.ran:
                    slot.conn.send(None)
                else:
                    slot.process.terminate()
            except (OSError, ValueError):
                slot.process.terminate()
        for slot in self._slots:
            slot.process.join(STOP_GRACE_S)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join()
            slot.conn.close()
