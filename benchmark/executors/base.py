"""The executor interface: carry out a run's job graph and hand every pair's record to the driver."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from inversion_bench.jobs import Job
from inversion_bench.run_context import RunContext

# Called on the driver once per pair, in the order pairs finish: (record, attack trace or None).
RecordSink = Callable[[dict[str, Any], "dict | None"], None]


class Executor(ABC):
    """Carries out the jobs of a run; each pair's record is written to the run folder by its job
    (or, for a pair whose dependency failed, by the executor) and passed to ``on_record``."""

    name: str

    starts_ahead = False
    """Whether :meth:`start` does something (the caller may skip looking for pending pairs otherwise)."""

    def start(self, ctx: RunContext) -> None:  # noqa: B027 (optional: most executors start nothing ahead)
        """Prepares to run jobs of ``ctx`` (e.g. starts worker processes) while the caller prepares the run;
        :meth:`execute` follows, or :meth:`close` when the run stops before it."""

    def close(self) -> None:  # noqa: B027
        """Releases what :meth:`start` took when :meth:`execute` did not (idempotent)."""

    @abstractmethod
    def execute(self, ctx: RunContext, jobs: Sequence[Job], on_record: RecordSink) -> None:
        """Runs ``jobs`` (listed in dependency order) and calls ``on_record`` for every pair job."""

