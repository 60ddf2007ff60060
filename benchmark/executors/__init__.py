"""Executors: where the jobs of a run's graph (:mod:`inversion_bench.jobs`) are carried out.

``local`` walks the graph in this process (the default); ``ray`` runs every job as a task on a Ray
cluster. Both call the same job code (:func:`inversion_bench.jobs.run_job`).
"""

from __future__ import annotations

from inversion_bench.config import RunConfig
from inversion_bench.executors.base import Executor, RecordSink

__all__ = ["Executor", "RecordSink", "make_executor"]


def make_executor(run: RunConfig) -> Executor:
    """The executor ``run.executor`` names; raises ``ConfigError`` (exit 2) when Ray is missing."""
    if run.executor == "ray":
        from inversion_bench.executors.ray import RayExecutor

        return RayExecutor(run.ray, threads=run.threads)
    from inversion_bench.executors.local import LocalExecutor

    return LocalExecutor()
