"""Example Inversion Bench plugin package: importing it registers the ``public-search`` attack."""

from bench_example_attack.attack import PublicSearch, hill_climb_step, select_candidates

__all__ = ["PublicSearch", "hill_climb_step", "select_candidates"]
__version__ = "0.1.0"
