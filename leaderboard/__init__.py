"""Leaderboard of a benchmark run, rebuilt from result records alone.

Example:
    >>> from inversion_bench.leaderboard import build_from_dirs
    >>> lb = build_from_dirs([Path("runs/2024-05-01_smoke")])  # doctest: +SKIP
    >>> lb.write("runs/2024-05-01_smoke/leaderboard")  # doctest: +SKIP
"""

from inversion_bench.leaderboard.build import Leaderboard, build, build_from_dirs
from inversion_bench.leaderboard.latex import latex_escape
from inversion_bench.leaderboard.model import (
    DATA_COLUMNS,
    NEAR_CHANCE_FACTOR,
    TEST_ACCURACY,
    WORST_CASE,
    Column,
    DefenseInfo,
    EvaluatorInfo,
    Failure,
    LeaderboardTable,
    ReportSettings,
    WorstCase,
)
from inversion_bench.leaderboard.worst_case import ranked

__all__ = [
    "DATA_COLUMNS",
    "NEAR_CHANCE_FACTOR",
    "TEST_ACCURACY",
    "WORST_CASE",
    "Column",
    "DefenseInfo",
    "EvaluatorInfo",
    "Failure",
    "Leaderboard",
    "LeaderboardTable",
    "ReportSettings",
    "WorstCase",
    "build",
    "build_from_dirs",
    "latex_escape",
    "ranked",
]
