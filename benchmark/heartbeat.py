"""A log line every so often while an attack runs without progress bars (``--no-progress``, or stderr
not a terminal), like the training heartbeat (:data:`inversion_bench.training.HEARTBEAT_S`): a long
attack is otherwise silent for as long as it runs.

The line names the attack and the target, the queries so far (images the oracle was asked about;
forward passes of the target for white-box attacks), the attack's budget when it declares one, and the
elapsed seconds. A background thread writes it; the attack itself is not touched.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType

from inversion_bench import training

log = logging.getLogger(__name__)


def heartbeat_line(desc: str, queries: int | None, budget: str | None, seconds: float) -> str:
    """``"mi-face on hard seed 0: 1,024 queries (budget: ...), 30 s"``; the parts not known are left out."""
    parts = [] if queries is None else [f"{queries:,} queries"]
    if budget:
        parts.append(f"(budget: {budget})")
    return f"{desc}: {' '.join(parts)}{', ' if parts else ''}{seconds:.0f} s"


def wanted(progress: bool, stream=None) -> bool:
    """Whether to beat: whenever there are no progress bars (:func:`inversion_bench.training.bars_wanted`:
    none requested, or the stream is not a terminal)."""
    return not training.bars_wanted(progress, stream)


class Heartbeat:
    """``with Heartbeat(desc, queries, budget, on=...):`` logs :func:`heartbeat_line` every
    ``training.HEARTBEAT_S`` seconds (read when entered) until the block ends; nothing when ``on`` is False."""

    def __init__(self, desc: str, queries: Callable[[], int | None], budget: str | None = None,
                 on: bool = True) -> None:
        self.desc, self.queries, self.budget, self.on = desc, queries, budget, on
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lines = 0

    def _beat(self, every: float, t0: float) -> None:
        while not self._stop.wait(every):
            try:
                queries = self.queries()
            except Exception:  # a counter that cannot be read does not end the attack
                queries = None
            log.info("%s", heartbeat_line(self.desc, queries, self.budget, time.perf_counter() - t0))
            self.lines += 1

    def __enter__(self) -> Heartbeat:
        if self.on:
            every = max(float(training.HEARTBEAT_S), 0.01)
            self._thread = threading.Thread(target=self._beat, args=(every, time.perf_counter()),
                                            name="attack-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
