"""The paper table's command-line options of ``bench report`` and ``bench leaderboard``.

``--table-metrics``, ``--table-attacks`` and ``--caption`` override the records' ``report.table``
settings for one report (e.g. a table combining run folders whose suites chose differently); the
names are checked against the table's columns when it is built
(:func:`inversion_bench.leaderboard.paper_table.with_table`).
"""

from __future__ import annotations

import argparse
from typing import Any

from inversion_bench.errors import ConfigError


def add_table_options(parser: argparse.ArgumentParser) -> None:
    """Adds the paper table's options to a report command's parser."""
    parser.add_argument("--table-metrics", metavar="M1,M2", help="metric keys the LaTeX and Markdown tables show "
                        "(the test accuracy and the worst case always show; default: the records' report.table)")
    parser.add_argument("--table-attacks", metavar="ID1,ID2", help="attack ids the LaTeX and Markdown tables show")
    parser.add_argument("--caption", choices=["short", "full"], help="LaTeX caption: short (the setup in one line) "
                        "or full (every attack's parameters)")
    parser.add_argument("--published", metavar="PROTOCOL", help="add the numbers papers and reference repositories "
                        "publish for PROTOCOL (e.g. celeba64) as marked reference rows beside the run's rows, with "
                        "their citations and setup differences (docs/protocols.md)")


def _names(option: str, text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"{option} {text!r}: give names separated by commas, e.g. {option} attack_acc@1,knn_distance")
    return names


def table_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """The given options as ``{"metrics": [...], "attacks": [...], "caption": ...}`` (only those given), or
    ``None`` when none is."""
    out: dict[str, Any] = {}
    if getattr(args, "table_metrics", None) is not None:
        out["metrics"] = _names("--table-metrics", args.table_metrics)
    if getattr(args, "table_attacks", None) is not None:
        out["attacks"] = _names("--table-attacks", args.table_attacks)
    if getattr(args, "caption", None) is not None:
        out["caption"] = args.caption
    return out or None
