"""Executors: where the jobs of a run's graph (:mod:`inversion_bench.jobs`) are carried out.

``local`` walks the graph on this machine: in this process (one worker, the default unless the
suite sets ``run.threads``), or with ``run.workers`` worker processes running independent jobs at
the same time (:mod:`inversion_bench.executors.parallel`); ``ray`` runs every job as a task on a Ray
cluster. All call the same job code (:func:`inversion_bench.jobs.run_job`).
"""

from __future__ import annotations

import logging
import os

from inversion_bench.config import RunConfig
from inversion_bench.errors import ConfigError
from inversion_bench.executors.base import Executor, RecordSink

__all__ = ["Executor", "RecordSink", "available_cpus", "local_workers", "make_executor"]

log = logging.getLogger(__name__)


def available_cpus() -> int:
    """The cores this process may run on: its CPU affinity where the platform has one (a batch
    scheduler's cpuset, ``taskset``), else every core of the machine."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def local_workers(run: RunConfig, cpus: int | None = None, on_cpu: bool = True) -> tuple[int, int | None]:
    """(worker processes, torch threads per job) of a local run on ``cpus`` cores (default: the cores
    this process may use, :func:`available_cpus`, so a 4-core job on a 64-core node starts 4 workers, not 64).

    ``run.workers`` when set; else as many jobs as fit the cores at the suite's thread count per job:
    ``cpus // run.threads`` (at least 1), and 1 (this process) when ``run.threads`` is unset (torch then
    uses every core for one job) or the device is not the CPU (``on_cpu`` False: one process per GPU).
    Threads per job with more than one worker: ``run.threads``, else the cores shared out,
    ``cpus // workers`` (at least 1); with one worker None (``run.threads`` or torch's choice, as before).
    """
    cpus = cpus or available_cpus()
    if run.workers is not None:
        workers = run.workers
    elif run.threads is None or not on_cpu:
        workers = 1
    else:
        workers = max(1, cpus // run.threads)
    if workers == 1:
        return 1, None
    return workers, run.threads or max(1, cpus // workers)


def unshareable_plugins() -> list[str]:
    """Plugins registered in this process that a fresh worker process cannot load (neither built in,
    nor an installed entry point, nor a ``--plugin`` file), as ``kind name (origin)``."""
    from inversion_bench.registry import REGISTRIES

    shareable = ("built-in", "entry point ", "file ")
    return [f"{info.kind} {info.name} ({info.origin})" for reg in REGISTRIES.values() for info in reg
            if not info.origin.startswith(shareable)]


def make_executor(run: RunConfig) -> Executor:
    """The executor ``run.executor`` names; raises ``ConfigError`` (exit 2) when Ray is missing or when
    ``run.workers`` > 1 meets a plugin that worker processes cannot load."""
    if run.executor == "ray":
        from inversion_bench.executors.ray import RayExecutor

        return RayExecutor(run.ray, threads=run.threads)
    from inversion_bench.executors.local import LocalExecutor
    from inversion_bench.run_context import resolve_device

    workers, threads = local_workers(run, on_cpu=resolve_device(run.device).type == "cpu")
    if workers > 1:
        local_only = unshareable_plugins()
        if local_only and run.workers is None:
            log.info("running in this process: worker processes cannot load %s", ", ".join(local_only))
        elif local_only:
            raise ConfigError(f"run.workers {workers} (--workers): worker processes cannot load the plugin(s) "
                              f"{', '.join(local_only)} registered in this process; pass them with --plugin FILE.py "
                              "or install them (entry point), or run with --workers 1")
        else:
            from inversion_bench.executors.parallel import ParallelExecutor

            assert threads is not None
            return ParallelExecutor(workers, threads)
    return LocalExecutor()
