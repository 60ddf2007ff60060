"""Leaderboard of a benchmark run, rebuilt from result records alone.

Example:
    >>> from leaderboard import build_from_dirs
    >>> lb = build_from_dirs([Path("runs/2024-05-01_smoke")])  # doctest: +SKIP
    >>> lb.write("runs/2024-05-01_smoke/leaderboard")  # doctest: +SKIP
"""

from leaderboard.build import (
    DATA_COLUMNS,
    NEAR_CHANCE_FACTOR,
    TEST_ACCURACY,
    Column,
    DefenseInfo,
    Failure,
    Leaderboard,
    build,
    build_from_dirs,
)
from leaderboard.latex import latex_escape

__all__ = [
    "DATA_COLUMNS",
    "NEAR_CHANCE_FACTOR",
    "TEST_ACCURACY",
    "Column",
    "DefenseInfo",
    "Failure",
    "Leaderboard",
    "build",
    "build_from_dirs",
    "latex_escape",
]
