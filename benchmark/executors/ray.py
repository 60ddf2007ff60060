"""The Ray executor: every job of a run is a Ray task (``bench run SUITE --executor ray``).

Jobs and dependencies (:func:`inversion_bench.jobs.job_graph`): the evaluation model, the prior
and one target per (defense, seed) are tasks without dependencies, so they run at the same time as
far as the cluster's resources allow; each attack task receives the object references of its target
and, when it needs one, of the prior; each pair task (score + record) receives those of its attack
and of the evaluation model. Ray starts a task when its dependencies are done.

Products move through the store, never through Ray's object store: a product task returns its
content key, and a worker rebuilds the run's context from the suite (``ContextSpec``) and reads its inputs
from the run folder, which therefore sits on a filesystem every node mounts at the same path. A pair
task writes its record itself and returns it, so that the driver can mirror it to MLflow as it
arrives. Resources and retries come from ``run.ray``: a task whose worker process or node dies is
rerun up to ``max_retries`` times; when it still fails (or raised an exception and
``retry_exceptions`` is off) the pair is recorded as failed with the error and traceback.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Sequence
from typing import Any

from inversion_bench.config import RayConfig
from inversion_bench.errors import BenchError, ConfigError
from inversion_bench.executors.base import Executor, RecordSink
from inversion_bench.executors.worker import ContextSpec, worker_context
from inversion_bench.jobs import Job, record_failed_pair, run_job
from inversion_bench.run_context import RunContext

log = logging.getLogger(__name__)

INSTALL_HINT = 'install it with: pip install -e ".[ray]"  (or: pip install "ray[default]>=2.9")'


def require_ray() -> Any:
    """Imports Ray, or raises ``ConfigError`` (exit 2) saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"run.executor: ray (--executor ray) needs Ray, which is not installed; {INSTALL_HINT}; "
                          "or run without --executor ray") from None
    return ray


def task_options(cfg: RayConfig) -> dict[str, Any]:
    """Ray ``.options()`` of every job task from ``run.ray``."""
    opts: dict[str, Any] = {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus, "max_retries": cfg.max_retries,
                            "retry_exceptions": cfg.retry_exceptions}
    if cfg.memory is not None:
        opts["memory"] = int(cfg.memory)
    return opts


def torch_threads(run_threads: int | None, num_cpus: float) -> int:
    """Torch threads inside a task: ``run.threads`` when set, else the task's CPUs (at least 1)."""
    return run_threads if run_threads is not None else max(1, int(num_cpus))


def execute(spec: ContextSpec, job: Job, threads: int, *dependencies: Any) -> Any:
    """The body of every Ray task: ``job`` in this worker's ``RunContext``.

    ``dependencies`` are the store keys of the jobs ``job`` depends on (Ray resolves the object
    references before starting the task); the products themselves are read from the store.
    """
    import torch

    torch.set_num_threads(threads)
    ctx = worker_context(spec)
    for key in dependencies:
        if key is not None and not isinstance(key, str):
            raise BenchError(f"job {job.id}: dependency result {key!r} is not a store key")
    return run_job(ctx, job)


def error_text(exc: BaseException) -> str:
    """``"Type: message"`` of the exception behind a Ray error (the task's own, when Ray wraps it)."""
    cause = getattr(exc, "cause", None)
    inner = cause if isinstance(cause, BaseException) else exc
    message = str(inner).strip().splitlines()
    return f"{type(inner).__name__}: {message[0] if message else ''}".rstrip(": ")


class RayExecutor(Executor):
    """Runs every job as a Ray task on the cluster at ``run.ray.address`` (or a new local one)."""

    name = "ray"

    def __init__(self, cfg: RayConfig, threads: int | None = None) -> None:
        self.ray = require_ray()
        self.cfg = cfg
        self.threads = torch_threads(threads, cfg.num_cpus)

    def _connect(self) -> bool:
        """Joins the cluster; returns whether this call started the connection (and must end it)."""
        if self.ray.is_initialized():
            return False
        address = self.cfg.address
        try:
            self.ray.init(address=address, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"run.ray.address (--address) {address}" if address else "run.ray.address"
            raise ConfigError(f"{where}: could not join a Ray cluster: {exc}; start one with `ray start --head` "
                              "(and `ray start --address HEAD:6379` on the workers), or leave --address out to "
                              "start a local one") from None
        return True

    def execute(self, ctx: RunContext, jobs: Sequence[Job], on_record: RecordSink) -> None:
        if not jobs:
            return
        started = self._connect()
        try:
            self._submit_and_wait(ctx, jobs, on_record)
        finally:
            if started:
                self.ray.shutdown()

    def _submit_and_wait(self, ctx: RunContext, jobs: Sequence[Job], on_record: RecordSink) -> None:
        ray = self.ray
        task = ray.remote(execute)
        options = task_options(self.cfg)
        spec = ray.put(ContextSpec.of(ctx))
        refs: dict[str, Any] = {}
        for job in jobs:
            refs[job.id] = task.options(name=job.id, **options).remote(
                spec, job, self.threads, *(refs[d] for d in job.deps))
        pending = {refs[job.id]: job for job in jobs if job.kind == "pair"}
        log.info("ray: %d task(s) submitted, %d pair(s)", len(jobs), len(pending))
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                assert job.pair is not None
                try:
                    out = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the task or one it depends on failed after its retries
                    out = {"record": record_failed_pair(ctx, job.pair, error_text(exc), _traceback_text(exc)),
                           "trace": None}
                on_record(out["record"], out["trace"])


def _traceback_text(exc: BaseException) -> str:
    remote = getattr(exc, "traceback_str", None)
    text = str(exc)
    if remote and remote not in text:
        text = f"{remote}\n{text}"
    return text if "Traceback" in text else "".join(traceback.format_exception(exc)) + "\n" + text
