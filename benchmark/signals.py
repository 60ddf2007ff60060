"""One way for a command to stop on a signal: SIGINT (Ctrl-C) and SIGTERM (``timeout``, Slurm,
``docker stop``, ``kill``) alike.

While :func:`stop_on_signals` is active, either signal raises :class:`Interrupted` (a
``KeyboardInterrupt``) in the main thread, so every ``with`` block unwinds as on Ctrl-C: the run
folder's lock is released, temporary product folders and record files are removed or left for the
next run to clean (records and products are written under temporary names and renamed into place,
so nothing partial is ever under its final name), and a rerun of the same command resumes. A second
signal while that cleanup runs gets the signal's default action (an impatient user can still kill
the process; the lock left behind is then taken over as stale by the next run on this host).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A command stopped by a signal; ``signum`` is the signal, ``exit_code`` the shell's 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _default(signum: int) -> Any:
    return signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL


def _raise(signum: int, frame: FrameType | None) -> None:
    for s in SIGNALS:  # the cleanup runs once; a second signal acts as it would without us
        signal.signal(s, _default(s))
    raise Interrupted(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` inside the block (main thread only; elsewhere,
    where Python allows no handlers, the block runs unchanged). The previous handlers come back after."""
    try:
        previous = {s: signal.signal(s, _raise) for s in SIGNALS}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else _default(s))
