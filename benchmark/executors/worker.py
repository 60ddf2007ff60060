"""A job outside the driver process: the run's context rebuilt from the suite, and the loop of a
local worker process (:mod:`inversion_bench.executors.pool`).

Both the Ray executor's tasks and the local executor's worker processes rebuild the driver's
:class:`~inversion_bench.run_context.RunContext` from a :class:`ContextSpec` (the resolved suite, the
working directory, the ``--plugin`` files, the run folder) and read every input product from the
store; they hand back store keys, and pair jobs their record.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from inversion_bench.config import validate_suite
from inversion_bench.errors import BenchError, disk_full
from inversion_bench.jobs import Job, run_job
from inversion_bench.products.data import splits
from inversion_bench.products.record import score_pair
from inversion_bench.registry import load_plugin_file, load_plugins, loaded_plugin_files
from inversion_bench.run_context import RunContext
from inversion_bench.store import content_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ContextSpec:
    """What a worker needs to rebuild the driver's ``RunContext``: the resolved suite mapping (includes
    merged, overrides applied), the driver's working directory (relative paths in the suite are
    taken from it), the ``--plugin`` files, the run folder and the plan's hash to check against."""

    raw: dict[str, Any]
    source: str
    cwd: str
    plugin_files: tuple[str, ...]
    run_dir: str
    suite_hash: str

    @classmethod
    def of(cls, ctx: RunContext) -> ContextSpec:
        return cls(raw=ctx.loaded.raw, source=ctx.loaded.source, cwd=os.getcwd(),
                   plugin_files=tuple(str(p) for p in loaded_plugin_files()),
                   run_dir=str(ctx.run_dir.resolve()), suite_hash=ctx.plan.suite_hash)

    @property
    def key(self) -> str:
        return content_key(asdict(self))


_WORKER_CONTEXT: dict[str, RunContext] = {}


def worker_context(spec: ContextSpec) -> RunContext:
    """The ``RunContext`` of ``spec`` in this worker process (built once, then reused by its later tasks)."""
    ctx = _WORKER_CONTEXT.get(spec.key)
    if ctx is None:
        host = socket.gethostname()
        if not Path(spec.cwd).is_dir():
            raise BenchError(f"{host}: the driver's working directory {spec.cwd} does not exist on this node; "
                             "relative paths of the suite (data, weights, checkpoints, run.output) are taken from "
                             "it: mount the shared filesystem at the same path on every node or use absolute paths")
        os.chdir(spec.cwd)
        load_plugins()
        for f in spec.plugin_files:
            load_plugin_file(f)
        loaded = validate_suite(spec.raw, spec.source)
        ctx = RunContext(loaded, run_dir=Path(spec.run_dir), progress=False)
        if ctx.plan.suite_hash != spec.suite_hash:
            raise BenchError(f"{host}: the suite resolves to other products on this node (suite hash "
                             f"{ctx.plan.suite_hash}, driver {spec.suite_hash}); install the same code and "
                             "plugins on every node and give data, weights and checkpoints on a shared filesystem")
        _WORKER_CONTEXT.clear()  # one suite per worker process at a time
        _WORKER_CONTEXT[spec.key] = ctx
    return ctx


# What a local worker sends back for each job: ("ok", job id, result) or
# ("failed", job id, "Type: message", traceback, disk-full message or None).
Outcome = tuple[Any, ...]


def run_local_job(spec: ContextSpec, job: Job, threads: int, release: frozenset[tuple[str, int]]) -> Outcome:
    """One job in a local worker process: ``release`` lists the targets no pending job uses any more
    (dropped from memory first, as the in-process walk does); a pair is scored but its record is
    returned, not written: the driver writes every record (one writer)."""
    import torch

    try:
        ctx = worker_context(spec)
        torch.set_num_threads(threads)
        for key in release:
            ctx.held.release_target(key)
        if job.kind == "pair":
            assert job.pair is not None
            return ("ok", job.id, score_pair(ctx, job.pair, write=False))
        return ("ok", job.id, run_job(ctx, job))
    except Exception as exc:
        full = disk_full(exc, None)
        shown = full if full is not None else exc
        return ("failed", job.id, f"{type(shown).__name__}: {shown}", traceback.format_exc(),
                None if full is None else str(full))


def warm_up(spec: ContextSpec, threads: int) -> None:
    """Rebuilds the run's context and loads its data before the first job arrives (every job reads the
    data), so that a worker started early does it while the driver prepares the run. A failure is left to
    the first job, which reports it as its own."""
    import torch

    try:
        torch.set_num_threads(threads)
        splits(worker_context(spec))
    except Exception as exc:  # reported by the first job, with its traceback
        log.debug("warm-up failed: %s", exc)


def _exit_with_parent(parent: int) -> None:
    """Ends this process as soon as the driver ``parent`` is gone (e.g. killed with SIGKILL), so that no
    orphan keeps computing; products are written atomically, so nothing partial stays behind."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def serve(conn: Connection, spec: ContextSpec, threads: int, log_level: int, parent: int) -> None:
    """The loop of a local worker process: receives ``(job, release)``, sends back its :data:`Outcome`,
    until it receives None or the driver is gone. Ctrl-C reaches the whole process group: workers
    ignore SIGINT and leave stopping them to the driver, which terminates them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(parent)
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s %(name)s [worker {os.getpid()}]: "
                        "%(message)s", datefmt="%H:%M:%S")
    warm_up(spec, threads)
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        job, release = message
        conn.send(run_local_job(spec, job, threads, release))
