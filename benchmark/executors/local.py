"""The in-process executor: every pair in turn, in this process (the default)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from inversion_bench.executors.base import Executor, Job, run_job

if TYPE_CHECKING:
    from inversion_bench.runner import Runner, RunSummary


class LocalExecutor(Executor):
    """Runs the pairs one after the other; each pair builds its target, the evaluation model and
    the prior on first use (from the store when there), so a pair's record is written as soon as it
    is scored and memory holds one seed's targets at a time."""

    name = "local"

    def run(self, runner: Runner, tracker: Any = None) -> RunSummary:
        summary, todo = runner.begin()
        for pair in todo:
            out = run_job(runner, Job("pair", f"pair:{pair.record_name}", pair=pair))
            runner.finish_pair(summary, out["record"], out["trace"], tracker)
        if tracker is not None:
            runner.mirror_missing(tracker)
        return summary
