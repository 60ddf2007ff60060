"""Example Inversion Bench plugin package: importing it registers the ``gaussian-logit-noise`` defense."""

from bench_example_defense.defense import GaussianLogitNoise, noisy_logits

__all__ = ["GaussianLogitNoise", "noisy_logits"]
__version__ = "0.1.0"
