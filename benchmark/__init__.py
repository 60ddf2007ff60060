"""Inversion Bench: benchmarking privacy defenses against model inversion attacks."""

__version__ = "0.1.0"
