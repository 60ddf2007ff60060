"""Timing shared by the overhead benchmarks (train_speed.py, attack_speed.py)."""

from __future__ import annotations

import statistics
from collections.abc import Callable


def alternating_medians(first: Callable[[], float], second: Callable[[], float], repeats: int) -> tuple[float, float]:
    """Median seconds of ``first`` and ``second`` (each returns its own time) over ``repeats`` rounds
    that alternate them, after one warm-up call of each (kernel selection, lazy imports), so a busy
    machine slows both alike."""
    first(), second()
    a, b = [], []
    for _ in range(repeats):
        a.append(first())
        b.append(second())
    return statistics.median(a), statistics.median(b)
