"""Executors: where the jobs of a run are carried out.

``local`` runs every job in this process (the default); ``ray`` runs every job as a task on a Ray
cluster. Both call the same job code (``inversion_bench.runner.Runner`` through ``base.run_job``).
"""

from inversion_bench.executors.base import Executor, Job, job_graph, make_executor, run_job

__all__ = ["Executor", "Job", "job_graph", "make_executor", "run_job"]
