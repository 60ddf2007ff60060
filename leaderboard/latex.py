"""Renders a :class:`~inversion_bench.leaderboard.model.LeaderboardTable` as a LaTeX (booktabs) table."""

from __future__ import annotations

from inversion_bench.leaderboard.cells import cell_rows, delta_text, display_text
from inversion_bench.leaderboard.labels import NOT_RUN, attack_heading, guarantee_text, has_guarantees
from inversion_bench.leaderboard.latex_caption import NA_MARK_TEX, latex_caption
from inversion_bench.leaderboard.latex_text import tex_text
from inversion_bench.leaderboard.model import Column, DefenseInfo, LeaderboardTable
from inversion_bench.leaderboard.number_format import decimals_by_column
from inversion_bench.leaderboard.paper_table import paper_view

LATEX_ARROWS = {"higher": r"$\uparrow$", "lower": r"$\downarrow$"}

_PM, _NA, _NR, _SIG = "\ue000", "\ue001", "\ue002", "\ue003"
"""Placeholders of the plus-minus sign and the n/a mark in a cell's text (private-use characters, which no
label can turn into markup)."""


def latex_escape(text: str) -> str:
    """Escapes LaTeX special characters and maps every non-ASCII character to LaTeX (or drops it), so the
    table compiles with pdflatex (:func:`~inversion_bench.leaderboard.latex_text.tex_text`); line breaks
    become spaces (a blank line would end the table's paragraph).

    Args:
        text: plain text.

    Returns:
        ASCII text safe to put in a LaTeX document.
    """
    return tex_text(text)


def _attack_groups(cols: list[Column]) -> list[tuple[Column, int]]:
    """(first column, number of adjacent columns of the same attack) over every column; the target
    columns form one group."""
    groups: list[tuple[Column, int]] = []
    for c in cols:
        if groups and groups[-1][0].attack == c.attack:
            groups[-1] = (groups[-1][0], groups[-1][1] + 1)
        else:
            groups.append((c, 1))
    return groups


def _group_header(cols: list[Column], eps_col: bool) -> list[str]:
    """The first header row: attack names (with their access level) spanning their metric columns, with
    ``\\cmidrule``s under them; the test accuracy alone has none, several target columns span "Target"."""
    top = ["", *([""] if eps_col else [])]
    rules = []
    start = 2 + int(eps_col)  # first value column (1-based: defense, [epsilon,] values ...)
    for first, span in _attack_groups(cols):
        if first.is_target and span == 1:
            top.append("")
        else:
            top.append(rf"\multicolumn{{{span}}}{{c}}{{{latex_escape(attack_heading(first))}}}")
            rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
        start += span
    lines = [" & ".join(top) + r" \\"]
    if rules:
        lines.append(" ".join(rules))
    return lines


def _metric_head(c: Column) -> str:
    if c.placeholder:
        name = ""
    elif c.is_test_accuracy:
        name = r"Test acc.\ (\%)"
    else:
        name = latex_escape(c.metric_name) + (r" (\%)" if c.is_share else "")
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
                lb, info.defense, c, cells[(info.defense, c.key)], decimals[c.key], pm=_PM, na_mark=_NA
            )
            text = latex_escape(text.replace(NOT_RUN, _NR))
            text = text.replace(_PM, r"$\pm$").replace(_NA, NA_MARK_TEX).replace(_NR, "--")
            row.append(text)
        lines.append(" & ".join(row) + r" \\")
    return lines


def _delta_rows(lb: LeaderboardTable, eps_col: bool) -> list[str]:
    """One Δ line per non-baseline defense: the difference of its means to the baseline's."""
    if lb.baseline is None:
        return []
    decimals = decimals_by_column(lb)
    cells = cell_rows(lb)
    lines = [r"\midrule"]
    for info in lb.defenses:
        if info.is_baseline:
            continue
        row = [r"$\Delta$ " + latex_escape(info.label), *([""] if eps_col else [])]
        for c in lb.columns:
            if c.placeholder:
                row.append("")
                continue
            text = delta_text(c, cells[(info.defense, c.key)], cells[(lb.baseline, c.key)], decimals[c.key],
                              na_mark=_NA, mark=_SIG)
            row.append(latex_escape(text.replace(NOT_RUN, _NR)).replace(_NA, NA_MARK_TEX).replace(_NR, "--")
                       .replace(_SIG, r"\textsuperscript{*}"))
        lines.append(" & ".join(row) + r" \\")
    return lines


def render_latex(lb: LeaderboardTable, deltas: bool = False) -> str:
    """Renders the main table as a LaTeX ``table`` (needs ``\\usepackage{booktabs,graphicx}``).

    Two header rows: attack names spanning their metric columns (``\\multicolumn`` and
    ``\\cmidrule``), then metric names with ``$\\uparrow$``/``$\\downarrow$``. The tabular is scaled
    down to the text width when wider (``\\resizebox``), never up. Only ASCII comes out (labels are
    mapped by :func:`latex_escape`), so it compiles with pdflatex as written. The columns are those
    the records' ``report.table`` selects (:mod:`~inversion_bench.leaderboard.paper_table`); the caption
    (:mod:`~inversion_bench.leaderboard.latex_caption`) states the setup, short or full.

    Args:
        lb: the leaderboard.
        deltas: add a Δ row per non-baseline defense (difference of means to the baseline).

    Returns:
        LaTeX source ending with a newline.
    """
    full, lb = lb, paper_view(lb)
    cols = lb.columns
    eps_col = has_guarantees(lb)
    lines = [
        "% Generated by leaderboard; needs \\usepackage{booktabs,graphicx}.",
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",
        r"\begin{tabular}{l" + "r" * (len(cols) + int(eps_col)) + "}",
        r"\toprule",
    ]
    lines += _group_header(cols, eps_col)
    heads = ["Defense", *([r"$\varepsilon$ (DP)"] if eps_col else []), *(_metric_head(c) for c in cols)]
    lines.append(" & ".join(heads) + r" \\")
    lines.append(r"\midrule")
    lines += _body(lb, eps_col)
    if deltas:
        lines += _delta_rows(lb, eps_col)
    lines += [r"\bottomrule", r"\end{tabular}}"]
    lines += [rf"\caption{{{latex_caption(full, lb, deltas)}}}", r"\label{tab:leaderboard}", r"\end{table}"]
    return "\n".join(lines) + "\n"
