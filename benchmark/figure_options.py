"""Which report figures to draw: ``--skip-figure NAME`` of ``bench run`` and ``bench report``.

Kept apart from the leaderboard package so that the command line can list the names without importing it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

FIGURES = ("privacy_utility", "qualitative", "embedding", "gradient_stability", "toy2d")
"""The report's figures, in page order."""
ALIASES = {"tsne": "embedding"}
"""Other names of figures: ``tsne`` is the embedding figure (the costliest to draw)."""


def figure_names(names: Sequence[str]) -> set[str]:
    """The figure names of ``names`` (aliases resolved). Raises ValueError naming the choices on an unknown one."""
    unknown = [n for n in names if n not in FIGURES and n not in ALIASES]
    if unknown:
        raise ValueError(f"--skip-figure {unknown[0]}: no such figure; choices: {', '.join((*FIGURES, *ALIASES))}")
    return {ALIASES.get(n, n) for n in names}


def add_skip_figure(parser: argparse.ArgumentParser) -> None:
    """Adds ``--skip-figure`` (repeatable; unknown names exit 2 listing the choices)."""
    parser.add_argument("--skip-figure", action="append", choices=[*FIGURES, *ALIASES], metavar="NAME",
                        help=f"leave this report figure out (repeatable; {', '.join(FIGURES)}; tsne = embedding, "
                        "the costliest: its t-SNE is otherwise cached in <run folder>/cache/tsne by its inputs)")
