"""Error types shared by the whole suite.

``ConfigError`` (and its subclasses) mean "the user's input is wrong": the CLI prints the message and
exits with code 2 before any expensive work starts. ``DivergedError`` marks a training run or attack
that produced NaN or inf values; the runner records the pair as failed with that reason.
"""

from __future__ import annotations


class BenchError(Exception):
    """Base class of every error raised on purpose by Inversion Bench."""


class ConfigError(BenchError):
    """Invalid user input (suite file, CLI option, plugin parameters). Exit code 2."""


class UnknownPluginError(ConfigError, KeyError):
    """A plugin name that no registry knows."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class MissingResourceError(ConfigError):
    """A data folder or weights file that the suite needs is not on disk."""


class DivergedError(BenchError):
    """Training or an attack produced NaN or inf values."""


class MetricUnavailableError(BenchError):
    """A metric cannot be computed for this pair; the message says why."""


class AccessError(BenchError):
    """An attack tried more than its declared access level allows (gradients or parameters through a
    black-box or label-only oracle); its pair fails with this error."""
