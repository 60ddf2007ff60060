"""The Ray executor: every job of a run is a Ray task (``bench run SUITE --executor ray``).

Jobs and dependencies (:func:`inversion_bench.executors.base.job_graph`): the evaluation model, the prior
and one target per (defense, seed) are tasks without dependencies, so they run at the same time as
far as the cluster's resources allow; each attack task receives the object references of its target
and, when it needs one, of the prior; each pair task (score + record) receives those of its attack
and of the evaluation model. Ray starts a task when its dependencies are done.

Products move through the store, never through Ray's object store: a product task returns its
content key, and a worker rebuilds a ``Runner`` from the suite (``RunnerSpec``) and reads its inputs
from the run folder, which therefore sits on a filesystem every node mounts at the same path. A pair
task writes its record itself and returns it, so that the driver can mirror it to MLflow as it
arrives. Resources and retries come from ``run.ray``: a task whose worker process or node dies is
rerun up to ``max_retries`` times; when it still fails (or raised an exception and
``retry_exceptions`` is off) the pair is recorded as failed with the error and traceback.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inversion_bench.config import RayConfig
from inversion_bench.errors import BenchError, ConfigError
from inversion_bench.executors.base import Executor, Job, attack_needs_prior, job_graph, run_job
from inversion_bench.plan import PairJob
from inversion_bench.results import write_record
from inversion_bench.store import content_key

if TYPE_CHECKING:
    from inversion_bench.runner import Runner, RunSummary

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


@dataclass(frozen=True)
class RunnerSpec:
    """What a worker needs to rebuild the driver's ``Runner``: the resolved suite mapping (includes
    merged, overrides applied), the driver's working directory (relative paths in the suite are
    taken from it), the ``--plugin`` files, the run folder and the plan's hash to check against."""

    raw: dict[str, Any]
    source: str
    cwd: str
    plugin_files: tuple[str, ...]
    run_dir: str
    suite_hash: str

    @classmethod
    def of(cls, runner: Runner) -> RunnerSpec:
        from inversion_bench.registry import loaded_plugin_files

        return cls(raw=runner.loaded.raw, source=runner.loaded.source, cwd=os.getcwd(),
                   plugin_files=tuple(str(p) for p in loaded_plugin_files()),
                   run_dir=str(runner.run_dir.resolve()), suite_hash=runner.plan.suite_hash)

    @property
    def key(self) -> str:
        return content_key(asdict(self))


_WORKER_RUNNER: dict[str, Runner] = {}


def worker_runner(spec: RunnerSpec) -> Runner:
    """The ``Runner`` of ``spec`` in this worker process (built once, then reused by its later tasks)."""
    runner = _WORKER_RUNNER.get(spec.key)
    if runner is None:
        from inversion_bench.config import validate_suite
        from inversion_bench.registry import load_plugin_file, load_plugins
        from inversion_bench.runner import Runner

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
        runner = Runner(loaded, run_dir=Path(spec.run_dir), progress=False)
        if runner.plan.suite_hash != spec.suite_hash:
            raise BenchError(f"{host}: the suite resolves to other products on this node (suite hash "
                             f"{runner.plan.suite_hash}, driver {spec.suite_hash}); install the same code and "
                             "plugins on every node and give data, weights and checkpoints on a shared filesystem")
        _WORKER_RUNNER.clear()  # one suite per worker process at a time
        _WORKER_RUNNER[spec.key] = runner
    return runner


def execute(spec: RunnerSpec, job: Job, threads: int, *dependencies: Any) -> Any:
    """The body of every Ray task: ``job`` on this worker's ``Runner``.

    ``dependencies`` are the store keys of the jobs ``job`` depends on (Ray resolves the object
    references before starting the task); the products themselves are read from the store.
    """
    import torch

    torch.set_num_threads(threads)
    runner = worker_runner(spec)
    runner.forget_failures()  # a retried job runs again instead of repeating a cached error
    for key in dependencies:
        if key is not None and not isinstance(key, str):
            raise BenchError(f"job {job.id}: dependency result {key!r} is not a store key")
    return run_job(runner, job)


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

    def run(self, runner: Runner, tracker: Any = None) -> RunSummary:
        started = self._connect()
        try:
            summary, todo = runner.begin()
            self._run_pairs(runner, summary, todo, tracker)
        finally:
            if started:
                self.ray.shutdown()
        if tracker is not None:
            runner.mirror_missing(tracker)
        return summary

    def _run_pairs(self, runner: Runner, summary: RunSummary, todo: list, tracker: Any) -> None:
        ray = self.ray
        graph = job_graph(runner.plan, todo, attack_needs_prior(runner.loaded))
        if not graph:
            return
        task = ray.remote(execute)
        options = task_options(self.cfg)
        spec = ray.put(RunnerSpec.of(runner))
        refs: dict[str, Any] = {}
        for job in graph:
            refs[job.id] = task.options(name=job.id, **options).remote(
                spec, job, self.threads, *(refs[d] for d in job.deps))
        pending = {refs[job.id]: job for job in graph if job.kind == "pair"}
        log.info("ray: %d task(s) submitted, %d pair(s)", len(graph), len(pending))
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    out = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    out = {"record": _record_of_failed_task(runner, job.pair, exc), "trace": None}
                runner.finish_pair(summary, out["record"], out["trace"], tracker)


def _record_of_failed_task(runner: Runner, pair: PairJob, exc: BaseException) -> dict[str, Any]:
    """The record of a pair whose task (or a task it depends on) failed after its retries.

    An ok record of the same configuration that the task wrote before its worker died is kept;
    otherwise the pair is recorded as failed with the task's error and traceback.
    """
    path = runner.records_dir / pair.record_name
    if path.is_file():
        try:
            written = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            written = {}
        if written.get("status") == "ok" and written.get("config_hash") == pair.config_hash:
            return written
    record = runner.failed_record(pair, error_text(exc), _traceback_text(exc))
    write_record(runner.records_dir, record)
    return record


def _traceback_text(exc: BaseException) -> str:
    remote = getattr(exc, "traceback_str", None)
    text = str(exc)
    if remote and remote not in text:
        text = f"{remote}\n{text}"
    return text if "Traceback" in text else "".join(traceback.format_exception(exc)) + "\n" + text
