"""Renders a :class:`~inversion_bench.leaderboard.model.LeaderboardTable` as a LaTeX (booktabs) table."""

from __future__ import annotations

from inversion_bench.leaderboard.formatting import (
    ACCESS_HELP,
    NOT_RUN,
    attack_heading,
    cell_rows,
    decimals_by_column,
    display_text,
    guarantee_text,
    has_guarantees,
    seed_summary,
)
from inversion_bench.leaderboard.model import Column, DefenseInfo, LeaderboardTable

LATEX_ARROWS = {"higher": r"$\uparrow$", "lower": r"$\downarrow$"}
NA_MARK_TEX = r"\textsuperscript{\textdagger}"
"""Footnote mark of values not computed in an otherwise successful run."""

_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """Escapes LaTeX special characters (``_``, ``%``, ``&``, ...) in plain text.

    Args:
        text: plain text.

    Returns:
        Text safe to put in a LaTeX document.
    """
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def _attack_groups(cols: list[Column]) -> list[tuple[str, int]]:
    """(attack id, number of adjacent columns) over the columns after the test accuracy."""
    groups: list[tuple[str, int]] = []
    for c in cols[1:]:
        if groups and groups[-1][0] == c.attack and c.attack:
            groups[-1] = (groups[-1][0], groups[-1][1] + 1)
        else:
            groups.append((c.attack, 1))
    return groups


def _group_header(cols: list[Column], eps_col: bool) -> list[str]:
    """The first header row: attack names (with their access level) spanning their metric columns, with
    ``\\cmidrule``s under them."""
    attack_labels = {c.attack: attack_heading(c) for c in cols}
    top = ["", "", *([""] if eps_col else [])]
    rules = []
    start = 3 + int(eps_col)  # first attack column (1-based: defense, [epsilon,] test accuracy, ...)
    for attack, span in _attack_groups(cols):
        top.append(rf"\multicolumn{{{span}}}{{c}}{{{latex_escape(attack_labels[attack])}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
        start += span
    lines = [" & ".join(top) + r" \\"]
    if rules:
        lines.append(" ".join(rules))
    return lines


def _metric_head(c: Column) -> str:
    if c.placeholder:
        name = ""
    elif c.is_target:
        name = r"Test acc.\ (\%)"
    else:
        name = latex_escape(c.metric) + (r" (\%)" if c.is_accuracy else "")
    arrow = LATEX_ARROWS.get(c.direction or "", "")
    return f"{name} {arrow}".strip()


def _row_label(info: DefenseInfo) -> str:
    label = latex_escape(info.label)
    if info.is_baseline:
        label += " (baseline)"
    if info.near_chance:
        label += r" \textbf{(near chance)}"
    return label


def _body(lb: LeaderboardTable, eps_col: bool) -> list[str]:
    """One line per defense: label, [guarantee,] cells."""
    decimals = decimals_by_column(lb)
    cells = cell_rows(lb)
    lines = []
    for info in lb.defenses:
        row = [_row_label(info), *([guarantee_text(info, latex=True)] if eps_col else [])]
        for c in lb.columns:
            text = display_text(
                lb, info.defense, c, cells[(info.defense, c.key)], decimals[c.key], pm="PLUSMINUS", na_mark="NAMARK"
            )
            text = latex_escape(text).replace("PLUSMINUS", r"$\pm$").replace("NAMARK", NA_MARK_TEX)
            text = text.replace(NOT_RUN, "--")
            row.append(text)
        lines.append(" & ".join(row) + r" \\")
    return lines


def _caption(lb: LeaderboardTable) -> str:
    caption = (
        f"Leaderboard of suite \\texttt{{{latex_escape(lb.suite)}}}: mean $\\pm$ sample standard deviation "
        f"over seeds ({latex_escape(seed_summary(lb))}); accuracies in \\%. "
        r"$\uparrow$/$\downarrow$: higher/lower is better for the defender. "
        r"``failed'': every seed of the pair failed."
    )
    levels = list(dict.fromkeys(c.access for c in lb.columns if c.is_attack and c.access))
    if levels:
        caption += " [access]: what the attack sees of the defended target (" + latex_escape(
            "; ".join(ACCESS_HELP.get(a, a) for a in levels)) + ")."
    if any(c.is_worst_case for c in lb.columns):
        caption += (
            " Worst case: per seed, the highest attack accuracy any attack reached against the defense, "
            "then mean $\\pm$ std over seeds, with the attack that reached it on most seeds."
        )
    if lb.missing:
        caption += f" {NA_MARK_TEX}~not computed in an otherwise successful run."
    if any(i.near_chance for i in lb.defenses):
        caption += " (near chance): test accuracy at most 2$\\times$ chance level."
    return caption


def render_latex(lb: LeaderboardTable) -> str:
    """Renders the main table as a LaTeX ``table`` (needs ``\\usepackage{booktabs}``).

    Two header rows: attack names spanning their metric columns (``\\multicolumn`` and
    ``\\cmidrule``), then metric names with ``$\\uparrow$``/``$\\downarrow$``.

    Args:
        lb: the leaderboard.

    Returns:
        LaTeX source ending with a newline.
    """
    cols = lb.columns
    eps_col = has_guarantees(lb)
    lines = [
        "% Generated by leaderboard; needs \\usepackage{booktabs}.",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{l" + "r" * (len(cols) + int(eps_col)) + "}",
        r"\toprule",
    ]
    lines += _group_header(cols, eps_col)
    heads = ["Defense", *([r"$\varepsilon$ (DP)"] if eps_col else []), *(_metric_head(c) for c in cols)]
    lines.append(" & ".join(heads) + r" \\")
    lines.append(r"\midrule")
    lines += _body(lb, eps_col)
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [rf"\caption{{{_caption(lb)}}}", r"\label{tab:leaderboard}", r"\end{table}"]
    return "\n".join(lines) + "\n"
