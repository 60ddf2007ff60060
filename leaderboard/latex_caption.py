"""The caption of ``leaderboard.tex``: what the numbers are, the legend of the marks, and the setup.

``report.table.caption`` picks its length (:class:`~inversion_bench.leaderboard.settings.TableSettings`):
``short`` (the default) states the dataset, the models and the experiment's overrides in a few lines
and points to the report page for every attack's parameters; ``full`` lists them. Either way ``run.*``
overrides (device, threads, the store and output folders) are left out -- they are not experiment
settings and carry local paths -- and command-line text is set verbatim (``\\texttt{-{}-set}``, never an
en dash).
"""

from __future__ import annotations

import re

from inversion_bench.leaderboard.labels import ACCESS_HELP, seed_summary, worst_case_words
from inversion_bench.leaderboard.latex_text import tex_text
from inversion_bench.leaderboard.legend import testability_note
from inversion_bench.leaderboard.model import LeaderboardTable
from inversion_bench.leaderboard.paper_table import hidden_note
from inversion_bench.leaderboard.setup_info import experiment_overrides, overrides_line, setup_body
from inversion_bench.leaderboard.significance import CORRECTION_NAMES

NA_MARK_TEX = r"\textsuperscript{\textdagger}"
"""Footnote mark of values not computed in an otherwise successful run."""

FLAG_TEX = r"\texttt{-{}-set}"
"""The ``--set`` option as LaTeX prints it (two hyphens, not an en dash)."""
_FLAG = "\ue010"
"""Placeholder of the ``--set`` option in the overrides line (a private-use character passes escaping)."""


def verbatim(text: str) -> str:
    """Command-line text as LaTeX that prints it as typed: escaped, with ``--`` kept two hyphens
    (``-{}-``) instead of the en dash the ligature would make."""
    return re.sub(r"-(?=-)", "-{}", tex_text(text))


def _overrides(lb: LeaderboardTable) -> str:
    """The experiment's ``--set`` overrides (``run.*`` left out), each in typewriter type."""
    overrides = experiment_overrides((lb.setup or {}).get("overrides"))
    if overrides is None:
        return tex_text(overrides_line(None, flag=_FLAG)).replace(_FLAG, FLAG_TEX)
    items = ", ".join(rf"\texttt{{{verbatim(o)}}}" for o in overrides) or "none"
    return f"Overrides ({FLAG_TEX}): {items}."


def _setup(lb: LeaderboardTable) -> str:
    """The setup sentence: every attack's parameters for a full caption, a pointer to the page otherwise."""
    if not lb.setup:
        return ""
    full = lb.settings.table.caption == "full"
    body = setup_body(lb.setup, attack_params=True) if full else setup_body(lb.setup)[:2]
    text = " Setup: " + tex_text(" ".join(body)) + " " + _overrides(lb)
    if not full:
        text += " Every attack's parameters: the report page (index.html)."
    return text


SHORT_ACCESS = {"white-box": "white-box: model and gradients", "black-box": "black-box: probabilities only",
                "label-only": "label-only: top-1 label only"}
"""The access levels in a few words (short caption)."""
SHORT_CORRECTION = {"bh": "BH-adjusted", "holm": "Holm-adjusted", "none": "unadjusted"}
"""The multiplicity corrections in a word (short caption)."""


def _legend(lb: LeaderboardTable, deltas: bool) -> str:
    """The marks: arrows, failures, access levels, worst case, n/a, near chance, Δ rows (a short
    caption says each in a few words)."""
    short = lb.settings.table.caption == "short"
    text = r" $\uparrow$/$\downarrow$: " + ("better for the defender." if short else
                                            "higher/lower is better for the defender.")
    if not short or lb.failures:
        text += r" ``failed'': every seed of the pair failed."
    levels = list(dict.fromkeys(c.access for c in lb.columns if c.is_attack and c.access))
    if levels:
        helps = "; ".join((SHORT_ACCESS if short else ACCESS_HELP).get(a, a) for a in levels)
        text += (" [access]: " + tex_text(helps) + "." if short else
                 " [access]: what the attack sees of the defended target (" + tex_text(helps) + ").")
    if any(c.is_worst_case for c in lb.columns):
        text += (" Worst case: the strongest attack's mean $\\pm$ its std." if short else
                 f" Worst case: the strongest attack's mean (the highest mean {tex_text(worst_case_words(lb))} over "
                 "seeds of any attack with a value on every seed), $\\pm$ its std over seeds.")
    if lb.missing:
        text += f" {NA_MARK_TEX}~not computed in an otherwise successful run."
    if any(i.near_chance for i in lb.defenses):
        text += " (near chance): test accuracy at most 2$\\times$ chance level."
    if deltas and lb.baseline is not None:
        test = (f"{SHORT_CORRECTION.get(lb.settings.correction, lb.settings.correction)} p < "
                f"{lb.settings.significance:g}, defense test over seeds"
                if short else "the defense test over seeds (trained models as the unit) gives a "
                f"{CORRECTION_NAMES[lb.settings.correction]} adjusted p < {lb.settings.significance:g}")
        text += " $\\Delta$ rows: difference of means to the baseline; * " + tex_text(test) + "."
    return text


def latex_caption(full: LeaderboardTable, shown: LeaderboardTable, deltas: bool = False) -> str:
    """The caption of the LaTeX table.

    Args:
        full: the whole leaderboard (its setup, and the columns the paper table leaves out).
        shown: the paper table (:func:`~inversion_bench.leaderboard.paper_table.paper_view`); the
            legend names only what it shows.
        deltas: the table has Δ rows.

    Returns:
        LaTeX text (ASCII) for ``\\caption{...}``.
    """
    lb = shown
    short = lb.settings.table.caption == "short"
    spread = (f"half-width of the {100 * lb.settings.confidence:g}\\% interval (crossed bootstrap over seeds "
              "and identities, or t over seeds; no CI: none)" if lb.settings.intervals else
              "std" if short else "sample standard deviation")
    caption = (f"Leaderboard of suite \\texttt{{{tex_text(lb.suite)}}}: mean $\\pm$ {spread} "
               f"over seeds ({tex_text(seed_summary(lb))}); accuracies in \\%.")
    caption += _legend(lb, deltas)
    if lb.baseline is not None and testability_note(lb):
        caption += " " + tex_text(testability_note(lb))
    if hidden_note(full):
        caption += " " + tex_text(hidden_note(full))
    return caption + _setup(full)
