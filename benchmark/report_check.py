"""Checks the names in a suite's ``report.table`` against the suite itself.

The schema (``suite_schema.TableConfig``) checks the shape; here every attack id must be one of the
suite's attacks and every metric key one that the suite's metric plugins report (their ``better``
keys, and ``test_accuracy``), so a misspelt name fails at ``bench validate`` instead of silently
leaving a column out of the paper table.
"""

from __future__ import annotations

import difflib

from inversion_bench.errors import ConfigError
from inversion_bench.registry import REGISTRIES
from inversion_bench.suite_schema import Suite

TEST_ACCURACY = "test_accuracy"


def metric_keys(suite: Suite) -> list[str]:
    """The metric keys the suite's records will hold: ``test_accuracy`` and every key its metric plugins
    declare (``Metric.better``), in suite order."""
    keys = [TEST_ACCURACY]
    for m in suite.metrics:
        keys += [k for k in getattr(REGISTRIES["metrics"].get(m.name), "better", None) or {} if k not in keys]
    return keys


def _unknown(source: str, field: str, index: int, name: str, known: list[str], what: str, fix: str) -> ConfigError:
    """The error for ``report.table.<field>[<index>]: <name>``: what it is not, the closest known name, the
    names to choose from and ``fix``."""
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{source}: report.table.{field}[{index}]: {name!r} is not {what}.{hint} Choose from "
                       f"{', '.join(known)}{fix}")


def check_report_table(suite: Suite, source: str) -> None:
    """Every name in ``report.table`` is one of the suite's attack ids or metric keys.

    Args:
        suite: the validated suite (plugin names already checked).
        source: the suite file, for messages.

    Raises:
        ConfigError: a name the suite does not have; the message names the file, the field, the
            known names and the fix.
    """
    table = suite.report.table
    attacks = suite.attack_ids()
    for i, name in enumerate(table.attacks or []):
        if name not in attacks:
            raise _unknown(source, "attacks", i, name, attacks, "an attack id of this suite", "")
    keys = metric_keys(suite)
    for i, name in enumerate(table.metrics or []):
        if name not in keys:
            raise _unknown(source, "metrics", i, name, keys, "a metric the suite's metrics report",
                           " (or add the metric plugin that reports it to metrics:)")
